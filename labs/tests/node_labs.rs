//! Direct routing and IP-in-IP on real namespaces with the real servers set up only by their
//! own `clusterserverd` (issue 5): the lab does no node configuration. Each run crashes the
//! primary (the tunnel-crash scenario shared with the simulator), requires requests to be
//! answered through the VIP by every real server, and requires every node to be exactly as
//! before once its daemon has stopped on SIGTERM (the runner compares snapshots and reports
//! any difference as a violation). Root only; skips LOUDLY otherwise. Each run is bounded
//! well under two minutes.
#![allow(clippy::disallowed_methods)] // reason: real-network tests wait on the wall clock

use std::path::{Path, PathBuf};

use clusterlab::{report, runner};
use clustersim::scenario::Scenario;

fn can_run() -> bool {
    let ok = nix::unistd::Uid::effective().is_root() && runner::preflight().is_ok();
    if !ok {
        println!("SKIPPED: needs root (and ip, nft, nginx, tcpdump: scripts/install-deps)");
        eprintln!("SKIPPED: needs root (and ip, nft, nginx, tcpdump: scripts/install-deps)");
    }
    ok
}

fn dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn run(forwarding: &str) {
    runner::set_helper_exe(PathBuf::from(env!("CARGO_BIN_EXE_clusterlab")));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sim/scenarios/tunnel-crash.json5");
    let mut s = Scenario::from_file(&path).expect("scenario");
    s.topology.forwarding = forwarding.to_string();
    s.name = format!("{forwarding}-crash");
    s.duration_ms = Some(12_000);
    // Generous bound: a real kernel on a shared 2-core VM.
    s.expect.max_outage_ms = Some(3000);
    let d = dir(&s.name);
    let lo = runner::run(&s, &d).unwrap_or_else(|e| panic!("lab run failed: {e:#}"));
    report::write(&lo).expect("report");
    let summary = report::summary(&lo);
    println!("{summary}");
    let o = &lo.outcome;
    // Includes "node is not clean after its daemon stopped" from the runner's snapshots.
    assert!(o.passed(), "{summary}\nviolations: {:?}", o.violations);
    assert!(!o.violations.iter().any(|v| v.contains("not clean")), "{:?}", o.violations);
    assert_eq!(o.primaries.last().map(|p| p.1.as_str()), Some("atm2"));
    assert_eq!(o.long_lived_lost, 0);
    // Real traffic through the VIP, answered by each of the three real servers.
    assert!(lo.requests >= 500, "only {} requests answered through the VIP", lo.requests);
    let served: std::collections::BTreeMap<String, u64> =
        lo.by_server.values().flat_map(|m| m.iter().map(|(k, v)| (k.clone(), *v))).collect();
    for n in ["node1", "node2", "node3"] {
        assert!(served.get(n).is_some_and(|c| *c > 0), "{n} answered nothing: {served:?}");
    }
}

#[test]
fn direct_routing_with_nodes_set_up_by_their_daemon() {
    if can_run() {
        run("dr");
    }
}

#[test]
fn tunnel_with_nodes_set_up_by_their_daemon() {
    if can_run() {
        run("tunnel");
    }
}
