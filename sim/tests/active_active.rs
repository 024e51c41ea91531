//! Active-active mode in the stepped ECMP model ([`clustersim::ecmp`]): a drain, a crash, a
//! rejoin and a freeze, each with the real announcer, engines and connection sync. Checked:
//! no flow breaks (a flow the router moves keeps its real server), the pauses are the
//! detection times, and the trace is a pure function of the seed (snapshots in `snapshots/`).
//! A rejoining ATM first takes its peers' tables (full sync on join), so even a flow whose
//! server set changed while it was away keeps its server when the router moves it there.

use clustersim::ecmp::{BGP_DELAY_MS, HOLD_MS, JOIN_SYNC_WAIT_MS, Measures, Step, run, run_with};

const FLOWS: usize = 60;

fn snapshot(name: &str, trace: &str) {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/../snapshots"));
    settings.bind(|| insta::assert_snapshot!(name, trace));
}

#[test]
fn drain_withdraws_first_and_breaks_no_flow() {
    let o = run(7, 3, FLOWS, &[(1000, Step::Drain(2))], 5000);
    assert_eq!(o.broken, 0, "{}", o.trace);
    assert!(o.longest_pause_ms <= 20, "pause {} ms\n{}", o.longest_pause_ms, o.trace);
    assert!(o.trace.contains("router next hops [atm1, atm2],") && o.trace.contains("atm3 exits"));
    let withdrawn = o.trace.find("router next hops [atm1, atm2]").unwrap();
    assert!(withdrawn < o.trace.find("atm3 exits").unwrap(), "withdrawn before the exit");
    snapshot("ecmp_drain", &o.trace);
}

#[test]
fn a_crash_moves_its_flows_within_the_bgp_delay_and_a_rejoin_breaks_none() {
    let o = run(7, 3, FLOWS, &[(1000, Step::Crash(1)), (2000, Step::Join(1))], 5000);
    assert_eq!(o.broken, 0, "{}", o.trace);
    assert!(o.longest_pause_ms <= BGP_DELAY_MS + 20, "pause {} ms\n{}", o.longest_pause_ms, o.trace);
    snapshot("ecmp_crash_join", &o.trace);
}

#[test]
fn a_frozen_atm_keeps_its_flows_for_the_hold_time_then_they_move_unbroken() {
    let o = run(7, 3, FLOWS, &[(1000, Step::Freeze(0))], 6000);
    assert_eq!(o.broken, 0, "{}", o.trace);
    assert!(
        o.longest_pause_ms >= HOLD_MS && o.longest_pause_ms <= HOLD_MS + 30,
        "pause {} ms",
        o.longest_pause_ms
    );
    snapshot("ecmp_freeze", &o.trace);
}

#[test]
fn same_seed_same_trace() {
    let steps = [(500, Step::Drain(0)), (1500, Step::Crash(2)), (2500, Step::Join(0))];
    let a = run(11, 3, FLOWS, &steps, 4000);
    let b = run(11, 3, FLOWS, &steps, 4000);
    assert_eq!(a, b);
    assert_eq!(a.broken, 0, "{}", a.trace);
}

#[test]
fn without_sync_and_pickup_a_rejoin_breaks_the_flows_it_attracts() {
    // The same crash and rejoin with the daemon's consistency measures off: the rejoining
    // ATM drops the mid-flow segments of the flows the router re-slices to it.
    let steps = [(1000, Step::Crash(1)), (2000, Step::Join(1))];
    let o = run_with(7, 3, FLOWS, &steps, 8000, Measures { sync: false, pickup: false, join_sync: false });
    assert!(o.broken > 0, "{}", o.trace);
}

#[test]
fn a_server_added_then_an_atm_crashing_breaks_no_flow_thanks_to_sync_from_every_peer() {
    // Flows start while srv4 is drained; srv4 joins (Maglev now maps some of them to it);
    // atm2 crashes and its flows move to atm1 and atm3, which must know them from atm2's
    // sync records (each ATM keeps a replay window per sender) or they would go to srv4.
    let steps = [(1000, Step::AddServer), (2000, Step::Crash(1))];
    let o = run(7, 3, FLOWS, &steps, 5000);
    assert_eq!(o.broken, 0, "{}", o.trace);
    snapshot("ecmp_add_server_crash", &o.trace);
    // With pickup but no sync, the moved flows that Maglev now maps to srv4 break.
    let without =
        run_with(7, 3, FLOWS, &steps, 5000, Measures { sync: false, pickup: true, join_sync: false });
    assert!(without.broken > 0, "{}", without.trace);
}

/// atm2 crashes; while it is away srv4 is added on the running ATMs (Maglev now maps about a
/// quarter of the flows elsewhere, but they keep their servers through their table entries);
/// then atm2 rejoins and the router re-slices flows to it.
const AWAY_WHILE_A_SERVER_IS_ADDED: [(u64, Step); 3] =
    [(1000, Step::Crash(1)), (1500, Step::AddServer), (2500, Step::Join(1))];

#[test]
fn a_rejoin_after_a_server_was_added_breaks_no_flow_with_the_full_sync_on_join() {
    let o = run(7, 3, FLOWS, &AWAY_WHILE_A_SERVER_IS_ADDED, 6000);
    assert_eq!(o.broken, 0, "{}", o.trace);
    // The joiner waited for both peers' tables (not the bounded wait) and only then announced.
    let synced = o.trace.find("atm2 synced from every peer").expect("synced");
    let back = o.trace.find("router next hops [atm1, atm2, atm3]").expect("announced");
    assert!(synced < back, "announced after the sync\n{}", o.trace);
    assert!(!o.trace.contains("without a full sync"), "{}", o.trace);
    snapshot("ecmp_join_after_add_server", &o.trace);
    // Without the full sync on join, the flows re-sliced to atm2 that began before srv4 was
    // added and that Maglev now maps to srv4 break: the gap this closes.
    let m = Measures { join_sync: false, ..Measures::ON };
    let without = run_with(7, 3, FLOWS, &AWAY_WHILE_A_SERVER_IS_ADDED, 6000, m);
    assert!(without.broken > 0, "{}", without.trace);
    assert!(without.trace.contains("broken: server changed"), "{}", without.trace);
}

#[test]
fn a_joiner_whose_peer_is_down_announces_after_the_bounded_wait() {
    // atm3 is gone for good (drained) when atm2 rejoins: atm2 gets atm1's table, waits for
    // atm3's until the bound, says so, and announces.
    let steps = [(500, Step::Drain(2)), (3000, Step::Crash(1)), (3500, Step::Join(1))];
    let o = run(7, 3, FLOWS, &steps, 9000);
    assert_eq!(o.broken, 0, "{}", o.trace);
    let line = format!(
        "{:>6} ms  atm2 announces without a full sync after {JOIN_SYNC_WAIT_MS} ms (missing atm3)",
        3500 + JOIN_SYNC_WAIT_MS
    );
    assert!(o.trace.contains(&line), "{}", o.trace);
    // Announced at the bound; the router has it on the first tick after the BGP delay.
    let back = format!("{:>6} ms  router next hops [atm1, atm2]", 3500 + JOIN_SYNC_WAIT_MS + 10);
    assert!(o.trace.contains(&back), "{}", o.trace);
}

#[test]
fn a_joiner_that_lost_a_record_datagram_of_its_full_sync_asks_again_and_breaks_no_flow() {
    // atm2 rejoins after a server was added; the first record datagram that reaches it
    // during its join is lost. The peer's end marker counts it, so atm2 asks again at once
    // and announces only with the whole table: no flow breaks, no bounded wait.
    let steps = [
        (1000, Step::Crash(1)),
        (1500, Step::AddServer),
        (2500, Step::Join(1)),
        (2500, Step::LoseSync { to: 1, count: 1 }),
    ];
    let o = run(7, 3, FLOWS, &steps, 6000);
    assert_eq!((o.broken, o.sync_lost, o.joins_without_sync), (0, 1, 0), "{}", o.trace);
    let lost = o.trace.find("-> atm2 lost").expect("a datagram lost");
    let again = o.trace.find("counts records that did not arrive: asked again").expect("asked again");
    let synced = o.trace.rfind("atm2 synced from every peer").expect("synced");
    let back = o.trace.rfind("router next hops [atm1, atm2, atm3]").expect("announced");
    assert!(lost < again && again < synced && synced < back, "{}", o.trace);
    snapshot("ecmp_join_lost_record", &o.trace);
}
