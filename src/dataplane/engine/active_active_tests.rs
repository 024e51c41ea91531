//! Active-active mode's consistency, across engines built separately as on separate ATMs:
//! with `mh` and the same server set every engine picks the same real server for a flow
//! (so a flow the router moves to another ATM lands on the same server), and connection
//! sync between active engines covers the flows whose Maglev choice changed in between
//! (a server joined after the flow began).

use super::*;
use crate::dataplane::sched::maglev;
use crate::dataplane::settings::{SchedulerKind, ServiceSettings as Service};
use crate::dataplane::sync::{MAX_DATAGRAM, SyncReceiver, SyncSender};
use crate::dataplane::testkit;
use crate::dataplane::wire::build;
use crate::dataplane::wire::tcp::flags::{ACK, SYN};

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

fn server_addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, 10 + i)
}

/// A DR `mh` service over `n` servers; the last `drained` of them with weight 0.
fn service(n: u8, drained: u8) -> Service {
    let servers =
        (0..n).map(|i| testkit::server(&format!("s{i}"), server_addr(i), 80, u32::from(i < n - drained)));
    Service::builder("web", VIP, 80)
        .forwarding(Forwarding::Dr)
        .scheduler(SchedulerKind::Mh)
        .servers(servers)
        .build()
}

/// An engine as ATM `atm` builds it: its own local address and (to show `mh` does not
/// depend on it) its own seed.
fn atm(atm: u8, svc: &Service) -> Engine {
    let mut e = Engine::new(&EngineConfig {
        services: vec![svc.clone()],
        table: settings::Table { max_connections: 10_000, ..settings::Table::default() },
        local_addr: Ipv4Addr::new(10, 0, 0, atm),
        local_addr6: core::net::Ipv6Addr::UNSPECIFIED,
        path_mtu: 1500,
        seed: 1000 + u64::from(atm),
    });
    e.set_active(true);
    e.set_sync(true);
    e
}

/// A flow: client address and port from `n`, spread like real clients.
fn flow(n: u64) -> (Ipv4Addr, u16) {
    let x = maglev::mix64(n);
    (Ipv4Addr::from(0xc633_0000 | (x as u32 & 0xffff)), 1024 + (x >> 32) as u16 % 60_000)
}

fn next_hop(e: &mut Engine, now: Instant, n: u64, flags: u8) -> Option<Ipv4Addr> {
    let mut tx = vec![0u8; 2048];
    let pkt = build::tcp(flow(n), (VIP, 80), flags, b"");
    match e.process(now, &pkt, &mut tx) {
        Verdict::L2 { next_hop: IpAddr::V4(h), .. } => Some(h),
        _ => None,
    }
}

const FLOWS: u64 = 2000;

#[test]
fn separately_built_engines_pick_the_same_server_for_every_flow() {
    let svc = service(5, 0);
    let mut atms: Vec<Engine> = (1..=3).map(|i| atm(i, &svc)).collect();
    let mut used = std::collections::BTreeSet::new();
    for n in 0..FLOWS {
        let picks: Vec<_> = atms.iter_mut().map(|e| next_hop(e, Instant::ZERO, n, SYN)).collect();
        assert!(picks[0].is_some() && picks.iter().all(|p| *p == picks[0]), "flow {n}: {picks:?}");
        used.extend(picks[0]);
    }
    assert_eq!(used.len(), 5, "every server takes flows");
    // The same health change on every ATM (server 2 down): they still agree, and only the
    // flows of server 2 move.
    let mut fresh: Vec<Engine> = (1..=3).map(|i| atm(i, &svc)).collect();
    for e in &mut fresh {
        e.set_server_state(0, 2, 1, false).unwrap();
    }
    for n in 0..FLOWS {
        let picks: Vec<_> = fresh.iter_mut().map(|e| next_hop(e, Instant::ZERO, n, SYN)).collect();
        assert!(picks.iter().all(|p| *p == picks[0]) && picks[0] != Some(server_addr(2)), "flow {n}");
    }
}

#[test]
fn sync_between_active_engines_keeps_flows_whose_maglev_choice_changed() {
    // atm1 takes the flows while server s5 is drained; then s5 is enabled everywhere and the
    // router moves the flows to atm2 (atm1 lost). Maglev alone would send some of them to s5
    // (a broken connection); with atm1's records, atm2 keeps each on its server.
    let svc = service(6, 1);
    let mut a1 = atm(1, &svc);
    let mut a2 = atm(2, &svc);
    let mut no_sync = atm(3, &svc);
    let first: Vec<Option<Ipv4Addr>> = (0..FLOWS).map(|n| next_hop(&mut a1, Instant::ZERO, n, SYN)).collect();
    for n in 0..FLOWS {
        next_hop(&mut a1, Instant::from_millis(1), n, ACK);
    }
    // Every record atm1 has, to atm2 (both active; atm2 applies them insert-only).
    let secret = b"cluster secret";
    let mut sender = SyncSender::new(secret, 7, 1, 1_000_000);
    let mut receiver = SyncReceiver::new(secret, 7);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut now = Instant::from_millis(2);
    let mut applied = 0;
    for _ in 0..10_000 {
        match sender.poll_transmit(now, &mut a1, &mut buf) {
            Some(len) => applied += receiver.handle(now, &buf[..len], &mut a2).expect("authentic"),
            None => match sender.poll_timeout() {
                Some(t) => now = t,
                None => break,
            },
        }
    }
    assert_eq!(applied as u64, FLOWS, "every connection synced");
    for e in [&mut a2, &mut no_sync] {
        e.set_server_state(0, 5, 1, true).unwrap();
    }
    let later = Instant::from_millis(5000);
    let mut moved_without_sync = 0;
    for n in 0..FLOWS {
        assert_eq!(next_hop(&mut a2, later, n, ACK), first[n as usize], "flow {n} changed server on atm2");
        if next_hop(&mut no_sync, later, n, SYN) != first[n as usize] {
            moved_without_sync += 1;
        }
    }
    // About 1/6 of the flows would have moved to s5 without the sync.
    assert!(moved_without_sync > FLOWS / 10, "only {moved_without_sync} flows would have moved");
}

#[test]
fn a_joining_engine_picks_up_mid_flow_segments_on_the_same_server() {
    // A flow begun on atm1 reaches atm2 mid-flow with no sync record (atm2 just joined):
    // with pickup, atm2 sends it to the server atm1 chose; without, it is dropped.
    let svc = service(5, 0);
    let mut a1 = atm(1, &svc);
    let mut joiner = atm(2, &svc);
    joiner.set_mid_flow_pickup(true);
    let mut plain = atm(3, &svc);
    for n in 0..FLOWS {
        let first = next_hop(&mut a1, Instant::ZERO, n, SYN);
        assert_eq!(next_hop(&mut joiner, Instant::ZERO, n, ACK), first, "flow {n}");
        assert_eq!(next_hop(&mut plain, Instant::ZERO, n, ACK), None, "flow {n} without pickup");
    }
    assert_eq!(joiner.stats().picked_up, FLOWS);
    assert_eq!(plain.stats().dropped(DropReason::NoConnection), FLOWS);
    // A reset of an unknown flow is not a reason to make an entry.
    assert_eq!(
        next_hop(&mut joiner, Instant::ZERO, FLOWS + 1, crate::dataplane::wire::tcp::flags::RST),
        None
    );
}
