//! Property and regression tests for every scheduler (weights, drain, stability, Maglev
//! disruption). The disruption report prints with `--nocapture`.

use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use super::maglev::MaglevTable;
use super::*;

const ALL: [SchedulerKind; 6] = SchedulerKind::ALL;

/// A small prime table keeps the property tests fast.
const SMALL: SchedOptions = SchedOptions { table_size: 4099 };

fn slot(i: usize, weight: u32, up: bool) -> ServerSlot {
    ServerSlot {
        weight,
        up,
        active_conns: 0,
        key: server_key(&format!("s{i}"), IpAddr::V4(Ipv4Addr::new(10, 1, (i >> 8) as u8, i as u8)), 80),
    }
}

fn servers_strategy() -> impl Strategy<Value = Vec<ServerSlot>> {
    prop::collection::vec((0u32..8, prop::bool::weighted(0.85)), 1..12)
        .prop_map(|v| v.into_iter().enumerate().map(|(i, (w, up))| slot(i, w, up)).collect())
}

fn client(n: u64) -> IpAddr {
    let x = maglev::mix64(n);
    IpAddr::V4(Ipv4Addr::from((x >> 32) as u32))
}

/// Picks `picks` times, each new connection staying open (`active_conns` grows).
fn run(kind: SchedulerKind, servers: &mut [ServerSlot], picks: u64) -> Vec<u64> {
    let mut s = build_with(kind, servers, SMALL).unwrap();
    let mut counts = vec![0u64; servers.len()];
    for n in 0..picks {
        if let Some(i) = s.pick(maglev::mix64(n ^ 0x5eed), client(n), servers) {
            assert!(servers[i].eligible(), "{kind:?} picked an ineligible server");
            counts[i] += 1;
            servers[i].active_conns += 1;
        } else {
            assert!(servers.iter().all(|s| !s.eligible()), "{kind:?} gave up");
        }
    }
    counts
}

/// The share a server should get: its weight for weighted kinds, equal for rr and lc.
fn expected_weight(kind: SchedulerKind, s: &ServerSlot) -> u64 {
    match (s.eligible(), kind) {
        (false, _) => 0,
        (true, SchedulerKind::Rr | SchedulerKind::Lc) => 1,
        (true, _) => u64::from(s.weight),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Deterministic schedulers: over `k` full cycles every server gets exactly its share.
    #[test]
    fn rotating_schedulers_honour_weights(mut servers in servers_strategy(), k in 1u64..5) {
        for kind in [SchedulerKind::Rr, SchedulerKind::Wrr, SchedulerKind::Lc, SchedulerKind::Wlc] {
            let mut copy = servers.clone();
            let cycle: u64 = servers.iter().map(|s| expected_weight(kind, s)).sum();
            let counts = run(kind, &mut copy, cycle * k);
            for (s, c) in servers.iter().zip(&counts) {
                prop_assert_eq!(*c, expected_weight(kind, s) * k, "{:?} {:?}", kind, servers);
            }
        }
        servers.clear();
    }

    /// Hashing schedulers: each server's share of the Maglev table is its weight's share, to
    /// within rounding, and picks over many flows follow the table.
    #[test]
    fn hashing_schedulers_honour_weights(servers in servers_strategy()) {
        let table = MaglevTable::build(&servers, SMALL.table_size).unwrap();
        let total: u64 = servers.iter().map(|s| expected_weight(SchedulerKind::Mh, s)).sum();
        if total == 0 {
            prop_assert!(table.entries().is_empty());
            return Ok(());
        }
        let m = table.entries().len() as f64;
        for (i, s) in servers.iter().enumerate() {
            let owned = table.entries().iter().filter(|&&e| e as usize == i).count() as f64;
            let w = expected_weight(SchedulerKind::Mh, s) as f64;
            let ideal = m * w / total as f64;
            // Rounding of whole turns (< 1), the partial last round (<= 1), and the share of
            // everyone's rounding this server absorbs (<= N w / W); see maglev.rs.
            let tol = 2.0 + servers.len() as f64 * w / total as f64;
            prop_assert!((owned - ideal).abs() <= tol, "server {} owns {} ideal {}", i, owned, ideal);
        }
        for kind in [SchedulerKind::Sh, SchedulerKind::Mh] {
            let mut copy = servers.clone();
            let picks = 20_000u64;
            let counts = run(kind, &mut copy, picks);
            for (s, c) in servers.iter().zip(&counts) {
                let ideal = picks as f64 * expected_weight(kind, s) as f64 / total as f64;
                // Binomial spread: 5 sigma plus the table's rounding.
                let tol = 5.0 * ideal.sqrt() + 10.0;
                prop_assert!((*c as f64 - ideal).abs() <= tol, "{:?}: {} vs {}", kind, c, ideal);
            }
        }
    }

    /// Removing one of N servers moves close to the ideal 1/N of the table.
    #[test]
    fn maglev_disruption_near_ideal(n in 5usize..60, gone in 0usize..60) {
        // M/N >= 1000 here; the paper's guidance is M >> 100 N.
        let gone = gone % n;
        let (moved, _) = disruption(n, gone, maglev::DEFAULT_TABLE_SIZE);
        let ideal = 1.0 / n as f64;
        prop_assert!(moved >= ideal * 0.9, "n {} moved {} ideal {}", n, moved, ideal);
        prop_assert!(moved <= ideal * 1.5, "n {} moved {} ideal {}", n, moved, ideal);
    }
}

/// Fraction of table entries whose server changed, and the part of it that did not belong to
/// the removed server, when server `gone` of `n` equal servers goes down.
fn disruption(n: usize, gone: usize, size: usize) -> (f64, f64) {
    let mut servers: Vec<ServerSlot> = (0..n).map(|i| slot(i, 100, true)).collect();
    let before = MaglevTable::build(&servers, size).unwrap();
    servers[gone].up = false;
    let after = MaglevTable::build(&servers, size).unwrap();
    let (mut moved, mut extra) = (0usize, 0usize);
    for (b, a) in before.entries().iter().zip(after.entries()) {
        if b != a {
            moved += 1;
            if *b as usize != gone {
                extra += 1;
            }
        }
    }
    (moved as f64 / size as f64, extra as f64 / size as f64)
}

/// The figures quoted in the module docs (`cargo test disruption_report -- --nocapture`):
/// the mean over 10 different removed servers, and over 10 different joining servers.
#[test]
fn disruption_report() {
    for (n, m) in [
        (10usize, DEFAULT_TABLE_SIZE_FOR_TESTS),
        (100, DEFAULT_TABLE_SIZE_FOR_TESTS),
        (1000, DEFAULT_TABLE_SIZE_FOR_TESTS),
        (1000, 1_000_003), // M > 100 N, as the paper advises
    ] {
        let picks: Vec<usize> = (0..10).map(|k| (k * 7919 + 3) % n).collect();
        let (mut moved, mut extra) = (0.0, 0.0);
        for &g in &picks {
            let (a, b) = disruption(n, g, m);
            moved += a / 10.0;
            extra += b / 10.0;
        }
        // A server joining N - 1 others is the same pair of tables in the other order.
        println!(
            "maglev M={m} N={n}: ideal {:.2}% moved {:.2}% extra {:.2}% (mean of 10 removals; a join of the Nth is the reverse)",
            100.0 / n as f64,
            moved * 100.0,
            extra * 100.0
        );
        assert!(moved <= 1.0 / n as f64 + 0.01, "N={n}: moved {moved}");
    }
}

const DEFAULT_TABLE_SIZE_FOR_TESTS: usize = maglev::DEFAULT_TABLE_SIZE;

#[test]
fn wrr_is_smooth() {
    let servers = [slot(0, 5, true), slot(1, 1, true), slot(2, 1, true)];
    let mut s = build(SchedulerKind::Wrr, &servers);
    let seq: Vec<usize> = (0..7).map(|n| s.pick(n, client(n), &servers).unwrap()).collect();
    assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0]);
    // Equal weights: strict alternation, never the same server twice in a row.
    let servers = [slot(0, 3, true), slot(1, 3, true)];
    let mut s = build(SchedulerKind::Wrr, &servers);
    let seq: Vec<usize> = (0..6).map(|n| s.pick(n, client(n), &servers).unwrap()).collect();
    assert_eq!(seq, [0, 1, 0, 1, 0, 1]);
}

#[test]
fn drained_and_down_servers_get_nothing() {
    let servers = [slot(0, 0, true), slot(1, 5, false), slot(2, 3, true)];
    for kind in ALL {
        let mut copy = servers;
        let counts = run(kind, &mut copy, 500);
        assert_eq!(counts, [0, 0, 500], "{kind:?}");
        let none = [slot(0, 0, true), slot(1, 5, false)];
        let mut s = build(kind, &none);
        assert_eq!(s.pick(1, client(1), &none), None, "{kind:?}");
        assert_eq!(s.kind(), kind);
        assert_eq!(build(kind, &[]).pick(1, client(1), &[]), None);
    }
}

/// A stale hashing scheduler (server went down, not rebuilt yet) still never picks it.
#[test]
fn stale_table_skips_down_server() {
    let mut servers: Vec<ServerSlot> = (0..4).map(|i| slot(i, 1, true)).collect();
    let mut s = build(SchedulerKind::Mh, &servers);
    servers[1].up = false;
    for n in 0..2000 {
        let i = s.pick(n, client(n), &servers).unwrap();
        assert_ne!(i, 1);
    }
}

/// Hashes are pinned: a change here remaps every client on every ATM (see `HASH_KEYS`).
#[test]
fn hashes_are_stable() {
    assert_eq!(client_hash(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))), PINNED_CLIENT_HASH);
    let v6: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
    assert_eq!(client_hash(v6), PINNED_CLIENT_HASH);
    let servers: Vec<ServerSlot> = (0..5).map(|i| slot(i, 1, true)).collect();
    let table = MaglevTable::build(&servers, 4099).unwrap();
    assert_eq!(&table.entries()[..8], PINNED_TABLE_PREFIX);
    // Same keys in another order: same server for every slot.
    let mut rev = servers.clone();
    rev.reverse();
    let t2 = MaglevTable::build(&rev, 4099).unwrap();
    for (a, b) in table.entries().iter().zip(t2.entries()) {
        assert_eq!(servers[*a as usize].key, rev[*b as usize].key);
    }
}

const PINNED_CLIENT_HASH: u64 = 0x3b8e_a611_101e_8ec1;
const PINNED_TABLE_PREFIX: &[u32] = &[1, 0, 4, 0, 3, 2, 0, 2];

#[test]
fn table_size_must_be_prime() {
    let s = [slot(0, 1, true)];
    assert_eq!(
        build_with(SchedulerKind::Mh, &s, SchedOptions { table_size: 65536 }).unwrap_err(),
        SchedError::TableSizeNotPrime(65536)
    );
    assert!(maglev::is_prime(65537) && maglev::is_prime(3) && !maglev::is_prime(1));
}
