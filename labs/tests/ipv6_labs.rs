//! IPv6 and dual-stack labs on real namespaces (root only; they skip LOUDLY otherwise): the
//! primary host is lost under IPv6 load with NAT66, with direct routing (nodes set up by
//! their own daemon, checked clean after it stops, and never answering NDP for the VIP), and
//! with a dual-stack service whose two families are measured apart. Each run is bounded well
//! under two minutes. The scenarios are the IPv4 `primary-crash`/`tunnel-crash` with
//! `topology.ip` changed, shortened to 12 s (the IPv6 scenario files come with the
//! simulator's IPv6 LAN; `clusterlab compare --all` runs those).
#![allow(clippy::disallowed_methods)] // reason: real-network tests wait on the wall clock

use std::path::{Path, PathBuf};

use clusterlab::lab::Lab;
use clusterlab::topology::{Plan, Role};
use clusterlab::{family, ndp, ns, report, runner};
use clustersim::scenario::{IpFamily, Scenario};

fn can_run() -> bool {
    let ok = nix::unistd::Uid::effective().is_root()
        && runner::preflight().is_ok()
        && Path::new("/proc/net/if_inet6").exists();
    if !ok {
        println!("SKIPPED: needs root, IPv6 (and ip, nft, nginx, tcpdump: scripts/install-deps)");
        eprintln!("SKIPPED: needs root, IPv6 (and ip, nft, nginx, tcpdump: scripts/install-deps)");
    }
    ok
}

fn dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn scenario(base: &str, ip: IpFamily, forwarding: &str, name: &str, clients: usize) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../sim/scenarios/{base}.json5"));
    let mut s = Scenario::from_file(&path).expect("scenario");
    s.topology.ip = ip;
    s.topology.forwarding = forwarding.into();
    s.topology.clients = clients;
    s.name = name.into();
    s.duration_ms = Some(12_000);
    // Generous bound: a real kernel on a shared 2-core VM.
    s.expect.max_outage_ms = Some(3000);
    s
}

fn run(s: &Scenario) -> runner::LabOutcome {
    runner::set_helper_exe(PathBuf::from(env!("CARGO_BIN_EXE_clusterlab")));
    let lo = runner::run(s, &dir(&s.name)).unwrap_or_else(|e| panic!("lab run failed: {e:#}"));
    report::write(&lo).expect("report");
    println!("{}", report::summary(&lo));
    let o = &lo.outcome;
    assert!(o.passed(), "{}\nviolations: {:?}", report::summary(&lo), o.violations);
    assert_eq!(o.primaries.last().map(|p| p.1.as_str()), Some("atm2"));
    assert_eq!((o.long_lived, o.long_lived_lost), (20, 0));
    assert!(lo.requests >= 500, "only {} requests answered through the VIP", lo.requests);
    lo
}

/// `client`'s neighbour entry for the VIP of its family ended at atm2 and its requests went
/// to the VIP of `suffix`'s family (the load's output file is named by it) and were answered.
fn served(lo: &runner::LabOutcome, client: &str, suffix: &str) {
    let owner = lo.arp_changes.get(client).and_then(|c| c.last()).map(|c| c.1.as_str());
    assert_eq!(owner, Some("atm2"), "{client}");
    let csv =
        std::fs::read_to_string(lo.dir.join(format!("{client}-load{suffix}.csv"))).expect("load output");
    let answered = csv.lines().filter(|l| l.starts_with("req,") && l.contains(",1,node")).count();
    assert!(answered >= 250, "{client}: {answered} requests answered");
}

#[test]
fn ipv6_nat_survives_the_primary_host_lost_in_the_lab() {
    if !can_run() {
        return;
    }
    let lo = run(&scenario("primary-crash", IpFamily::Ipv6, "nat", "ipv6-nat-crash-test", 1));
    served(&lo, "client1", "6");
    // The backup's unsolicited advertisements were seen by the client.
    assert!(lo.arp_packets["client1"].iter().any(|(_, owner, unsolicited)| owner == "atm2" && *unsolicited));
}

#[test]
fn a_dual_stack_service_keeps_both_families_in_the_lab() {
    if !can_run() {
        return;
    }
    // client1 on IPv4, client2 on IPv6, as in the simulator; both within the bound (`run`).
    let lo = run(&scenario("primary-crash", IpFamily::Dual, "nat", "dual-stack-crash-test", 2));
    served(&lo, "client1", "");
    served(&lo, "client2", "6");
    assert_eq!(lo.client_family["client2"], "ipv6");
}

#[test]
fn ipv6_direct_routing_nodes_never_answer_ndp_in_the_lab() {
    if !can_run() {
        return;
    }
    let lo = run(&scenario("tunnel-crash", IpFamily::Ipv6, "dr", "ipv6-dr-crash-test", 1));
    served(&lo, "client1", "6");
    // Multicast, one per node, one to the primary; the runner turned any other answer into a
    // violation, which `run` found none of.
    assert_eq!(lo.ndp.len(), 5, "{:?}", lo.ndp);
    assert!(lo.ndp.iter().filter(|l| l.contains("answered by []")).count() == 3, "{:?}", lo.ndp);
}

/// The probe is not blind: a node holding the VIP on its LAN interface (what the node
/// daemon must never do) answers, and the check says so.
#[test]
fn the_ndp_probe_sees_a_node_that_answers_for_the_vip() {
    if !can_run() {
        return;
    }
    runner::set_helper_exe(PathBuf::from(env!("CARGO_BIN_EXE_clusterlab")));
    let mut s = Scenario::parse(
        "{ name: 't', topology: { atms: 1, nodes: 1, clients: 1, forwarding: 'dr', ip: 'ipv6' } }",
    )
    .expect("scenario");
    s.duration_ms = Some(1000);
    let plan = Plan::new(&s, &ns::new_run_id()).expect("plan");
    let lab = Lab::up(plan, &dir("ndp-probe")).expect("lab up");
    let node = lab.plan.of_role(Role::Node)[0].clone();
    let vip = format!("{}/128", family::vip6());
    ns::exec(&node.ns, &["ip", "addr", "add", &vip, "dev", "eth0", "nodad"]).expect("VIP on eth0");
    let mac =
        |ns: &str| clusterlab::measure::mac_text(&clusterlab::topology::mac_of(ns, "eth0").expect("mac"));
    let node_mac = mac(&node.ns);
    let client = lab.plan.of_role(Role::Client)[0].clone();
    let args = vec![
        "ndp-probe".to_string(),
        "eth0".into(),
        client.addr_in(family::Family::V6).to_string(),
        family::vip6().to_string(),
        node_mac.clone(),
    ];
    let out =
        lab.command(&client.name, Path::new(env!("CARGO_BIN_EXE_clusterlab")), &args).expect("cmd").output();
    let text = String::from_utf8_lossy(&out.expect("ndp-probe").stdout).into_owned();
    let answers = ndp::parse(&text);
    assert_eq!(answers.len(), 2, "{text}");
    assert!(answers.iter().all(|(_, macs)| macs == &vec![node_mac.clone()]), "{text}");
    let atm_mac = mac(&lab.plan.of_role(Role::Atm)[0].ns);
    let v = ndp::violations(&answers, &atm_mac, &[(node.name.clone(), node_mac.clone())]);
    assert_eq!(v.len(), 2, "both probes answered by the node: {v:?}");
}
