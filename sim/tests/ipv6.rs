//! The IPv6 scenarios' invariants can fail: the same runs with the measure that makes them
//! pass taken away must be caught (their passing runs are in `traces.rs`).

use std::path::Path;

use clustersim::runner;
use clustersim::scenario::Scenario;

fn scenario(name: &str) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios").join(format!("{name}.json5"));
    Scenario::from_file(&path).expect("scenario parses")
}

#[test]
fn without_connection_sync_the_ipv6_flows_are_lost_in_every_forwarding_mode() {
    for (name, flows) in [("ipv6-primary-crash", 20), ("ipv6-dr-crash", 30), ("ipv6-tunnel-crash", 20)] {
        let mut s = scenario(name);
        s.cluster.sync_connections = Some(false);
        let o = runner::run(&s, 1).expect("run");
        assert_eq!(o.long_lived, flows, "{name}");
        assert_eq!(o.long_lived_lost, flows, "{name}: {}", o.summary());
        assert!(!o.passed(), "{name}");
    }
}

#[test]
fn without_connection_sync_a_dual_stack_service_loses_the_flows_of_both_families() {
    let s = scenario("dual-stack-crash");
    let o = runner::run(&s, 1).expect("run");
    assert!(o.passed(), "{}", o.summary());
    // client1 runs IPv4 flows, client2 IPv6 ones: both families were answered.
    assert!(o.trace.iter().all(|l| !l.contains("moved from")), "{}", o.summary());
    assert_eq!(o.outage_ms.keys().collect::<Vec<_>>(), ["client1", "client2"]);
    let mut s = s;
    s.cluster.sync_connections = Some(false);
    let o = runner::run(&s, 1).expect("run");
    assert_eq!((o.long_lived, o.long_lived_lost), (20, 20), "{}", o.summary());
}

#[test]
fn a_client_left_on_the_old_primary_by_its_neighbour_cache_is_caught() {
    // Without the periodic re-announcement, the client that missed every unsolicited NA
    // keeps the dead primary in its (REACHABLE, confirmed) entry past its bound.
    let mut s = scenario("ipv6-stale-neighbour-cache");
    s.cluster.refresh_s = Some(0);
    let o = runner::run(&s, 1).expect("run");
    assert!(
        o.violations.iter().any(|v| v.contains("client2's neighbour cache points at atm1")),
        "{}",
        o.summary()
    );
}

#[test]
fn the_nat66_servers_resolve_their_gateway_by_solicitation_and_follow_the_new_primary() {
    let o = runner::run(&scenario("ipv6-primary-crash"), 1).expect("run");
    for node in ["node1", "node2", "node3"] {
        let line = |what: &str| o.trace.iter().any(|l| l.contains(node) && l.ends_with(what));
        assert!(line("nd fd00:1::fe -> atm1 (solicited NA)"), "{node}\n{}", o.trace.join("\n"));
        assert!(line("nd fd00:1::fe -> atm2 (unsolicited NA)"), "{node}\n{}", o.trace.join("\n"));
    }
}

#[test]
fn active_active_ipv6_breaks_no_flow_and_refuses_steps_it_cannot_perform() {
    let s = scenario("active-active-ipv6");
    let o = runner::run(&s, 1).expect("run");
    assert!(o.passed(), "{}", o.summary());
    assert_eq!((o.long_lived, o.long_lived_lost), (60, 0));
    // The model's trace is a pure function of the seed, and the seed is used.
    assert_eq!(runner::run(&s, 1).expect("run").trace, o.trace);
    assert_ne!(runner::run(&s, 2).expect("run").trace, o.trace);
    // A step the model cannot perform fails the scenario instead of being skipped.
    let mut bad = s.clone();
    bad.steps[0].partition = Some(vec![vec!["atm1".into()], vec!["atm2".into()]]);
    bad.steps[0].crash = None;
    assert!(runner::run(&bad, 1).is_err());
}
