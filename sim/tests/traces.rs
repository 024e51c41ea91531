//! Every scenario: the same (scenario, seed) gives a byte-identical trace, the trace at a
//! fixed seed matches its snapshot in the top-level `snapshots/`, and the run passes its
//! invariants and expectations.

use std::path::{Path, PathBuf};

use clustersim::runner;
use clustersim::scenario::Scenario;

fn scenarios() -> Vec<(String, Scenario)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("sim/scenarios exists")
        .map(|e| e.expect("readable").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json5"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 12, "expected the twelve scenarios of issue 2, found {}", paths.len());
    paths
        .into_iter()
        .map(|p| {
            let name = p.file_stem().and_then(|s| s.to_str()).expect("utf-8 name").to_string();
            (name, Scenario::from_file(&p).expect("scenario parses"))
        })
        .collect()
}

#[test]
fn same_seed_same_trace_and_snapshots_hold() {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/../snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| {
        for (name, s) in scenarios() {
            let a = runner::run(&s, 1).expect("run");
            let b = runner::run(&s, 1).expect("run");
            assert_eq!(a.trace, b.trace, "{name}: the trace is not a pure function of the seed");
            assert!(a.passed(), "{name} seed 1:\n{}", a.summary());
            let text = format!("{}\n---\n{}", a.trace.join("\n"), a.summary());
            insta::assert_snapshot!(format!("trace-{name}-seed1"), text);
        }
    });
}

#[test]
fn different_seeds_differ_somewhere() {
    let (_, s) = scenarios().into_iter().find(|(n, _)| n == "primary-crash").expect("primary-crash");
    let traces: Vec<Vec<String>> = (1..=4).map(|seed| runner::run(&s, seed).expect("run").trace).collect();
    assert!(traces.windows(2).any(|w| w[0] != w[1]), "four seeds gave the same trace: the seed is not used");
}

#[test]
fn a_drain_is_lost_with_the_machine_and_the_expectation_says_so() {
    // The invariant can fail: a drain is kept in the state file under /run, which a killed
    // daemon keeps and a lost machine does not. Crash atm2 instead of killing its daemon and
    // its restarted daemon forgets the drain, so node2 takes new connections once it is
    // primary.
    let (_, mut s) = scenarios().into_iter().find(|(n, _)| n == "drain-survives-restart").expect("scenario");
    let kill = s.steps.iter_mut().find(|st| st.kill.as_deref() == Some("atm2")).expect("kill atm2");
    kill.crash = kill.kill.take();
    let o = runner::run(&s, 1).expect("run");
    assert!(
        o.violations.iter().any(|v| v.starts_with("node2: removed")),
        "the drain was kept across a lost machine: {}",
        o.summary()
    );
    assert!(o.trace.iter().all(|l| !l.contains("atm2     server overrides restored")), "{}", o.summary());
}

#[test]
fn without_connection_sync_long_lived_flows_are_lost() {
    // The invariant can fail: the same failover with connection sync switched off must lose
    // the flows (the new primary's engine has no entry for them and drops their segments).
    let (_, mut s) = scenarios().into_iter().find(|(n, _)| n == "long-lived-failover").expect("scenario");
    s.cluster.sync_connections = Some(false);
    let o = runner::run(&s, 1).expect("run");
    assert_eq!(o.long_lived, 30);
    assert_eq!(o.long_lived_lost, 30, "{}", o.summary());
    assert!(!o.passed());
}

#[test]
fn a_client_left_on_the_old_primary_is_caught() {
    // The ARP invariant can fail: without the periodic re-announcement, the client that
    // missed every gratuitous ARP keeps the dead primary in its cache past its bound.
    let (_, mut s) = scenarios().into_iter().find(|(n, _)| n == "stale-arp-cache").expect("scenario");
    s.cluster.refresh_s = Some(0);
    let o = runner::run(&s, 1).expect("run");
    assert!(o.violations.iter().any(|v| v.contains("client2's ARP cache points at atm1")), "{}", o.summary());
}

#[test]
fn a_server_kept_too_long_after_failing_is_caught() {
    // The health bound can fail: with fall 10 (5 s of failed checks) the failed servers keep
    // getting new connections far past `removed_within_ms`.
    let (_, mut s) = scenarios().into_iter().find(|(n, _)| n == "health-checks").expect("scenario");
    let check = s.cluster.check.as_mut().expect("the scenario has a check");
    check.fall = 10;
    let o = runner::run(&s, 1).expect("run");
    assert!(o.violations.iter().any(|v| v.starts_with("node1: removed")), "{}", o.summary());
    assert!(o.violations.iter().any(|v| v.starts_with("node2: removed")), "{}", o.summary());
}

#[test]
fn health_checks_remove_and_return_servers_within_their_counts() {
    let (_, s) = scenarios().into_iter().find(|(n, _)| n == "health-checks").expect("scenario");
    let o = runner::run(&s, 3).expect("run");
    assert!(o.passed(), "{}", o.summary());
    let figures: Vec<(String, bool, bool)> =
        o.health.iter().map(|h| (h.server.clone(), h.failing, h.after_ms.is_some())).collect();
    let want = [("node1", true), ("node1", false), ("node2", true), ("node2", false)];
    assert_eq!(figures.len(), want.len(), "{}", o.summary());
    for ((server, failing, some), (ws, wf)) in figures.iter().zip(want) {
        assert_eq!((server.as_str(), *failing, *some), (ws, wf, true), "{}", o.summary());
    }
    // Failing: the third failed check comes at least two intervals (1000 ms) after the
    // fault, and connections arrive every 20 ms: the last one lands at 950 ms or later.
    let node1_down = o.health[0].after_ms.expect("figure");
    assert!(node1_down >= 950, "removed after {node1_down} ms, before three checks could fail");
}
