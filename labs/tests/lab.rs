//! Lab tests on real namespaces (root only; they skip LOUDLY otherwise). Each is bounded well
//! under two minutes.
#![allow(clippy::disallowed_methods)] // reason: real-network tests wait on the wall clock

use std::path::{Path, PathBuf};
use std::time::Duration;

use clusterlab::lab::Lab;
use clusterlab::measure::ClientResult;
use clusterlab::topology::{Plan, Role, STREAM_PORT};
use clusterlab::{faults, ns, report, runner};
use clustersim::scenario::Scenario;

fn can_run() -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    let tools = runner::preflight().is_ok();
    if !root || !tools {
        println!("SKIPPED: needs root (and ip, nft, nginx, tcpdump: scripts/install-deps)");
        eprintln!("SKIPPED: needs root (and ip, nft, nginx, tcpdump: scripts/install-deps)");
    }
    root && tools
}

fn scenario(text: &str) -> Scenario {
    Scenario::parse(text).expect("scenario")
}

fn dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn mine(run_id: &str) -> Vec<String> {
    let prefix = ns::ns_name(run_id, "");
    ns::list_lab_namespaces().into_iter().filter(|n| n.starts_with(&prefix)).collect()
}

/// PIDs of live processes with a file open under `dir` (the lab's logs): none may outlive it.
fn procs_using(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    let me = std::process::id().to_string();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.chars().all(|c| c.is_ascii_digit()) || pid == me {
            continue;
        }
        let fds = std::fs::read_dir(e.path().join("fd")).into_iter().flatten().flatten();
        if fds.filter_map(|f| std::fs::read_link(f.path()).ok()).any(|l| l.starts_with(dir)) {
            v.push(pid);
        }
    }
    v
}

#[test]
fn topology_up_down_leaves_nothing_even_on_panic() {
    if !can_run() {
        return;
    }
    let s = scenario(
        "{ name: 't', topology: { atms: 2, nodes: 2, clients: 1, forwarding: 'nat', rogue: true } }",
    );
    let plan = Plan::new(&s, &ns::new_run_id()).expect("plan");
    let run_id = plan.run_id.clone();
    let d = dir("updown");
    let (p2, d2, id2) = (plan.clone(), d.clone(), run_id.clone());
    let r = std::thread::spawn(move || {
        let mut lab = Lab::up(p2, &d2).expect("lab up");
        faults::install(&lab.plan).expect("nft");
        assert_eq!(
            lab.namespaces().len(),
            1 + 2 + 2 + 1 + 1 + 1,
            "switch, atms, nodes, client, router, rogue"
        );
        // The ATM reaches a node on the server subnet and the router on the front one.
        let atm = lab.plan.host("atm1").expect("atm1").ns.clone();
        let node = lab.plan.host("node2").expect("node2").addr().to_string();
        ns::exec(&atm, &["ping", "-c1", "-W1", &node]).expect("atm1 -> node2");
        ns::exec(&atm, &["ping", "-c1", "-W1", "10.0.0.254"]).expect("atm1 -> router");
        // No veth end in the root namespace.
        let root_links = std::process::Command::new("ip").args(["-o", "link"]).output().expect("ip link");
        let text = String::from_utf8_lossy(&root_links.stdout);
        assert!(!text.contains("s-atm1") && !text.contains("h-atm1"), "a lab link is in the root namespace");
        lab.spawn("node1/sleep", "node1", Path::new("/bin/sleep"), &["30".into()]).expect("spawn");
        assert!(!mine(&id2).is_empty());
        panic!("deliberate panic in the middle of a lab");
    })
    .join();
    assert!(procs_using(&d).is_empty(), "processes left behind: {:?}", procs_using(&d));
    let payload = r.expect_err("the lab thread should have panicked");
    let msg = payload.downcast_ref::<&str>().copied().unwrap_or("(not the deliberate panic)");
    assert_eq!(msg, "deliberate panic in the middle of a lab", "the lab failed before the deliberate panic");
    assert!(mine(&run_id).is_empty(), "namespaces left behind: {:?}", mine(&run_id));
}

#[test]
fn backends_answer_across_the_bridge_and_faults_cut_and_heal() {
    if !can_run() {
        return;
    }
    runner::set_helper_exe(PathBuf::from(env!("CARGO_BIN_EXE_clusterlab")));
    // DR: the real servers sit on the front subnet, so the client reaches them directly.
    let s = scenario("{ name: 't', topology: { atms: 1, nodes: 2, clients: 1, forwarding: 'dr' } }");
    let plan = Plan::new(&s, &ns::new_run_id()).expect("plan");
    let run_id = plan.run_id.clone();
    let d = dir("backends");
    {
        let mut lab = Lab::up(plan, &d).expect("lab up");
        faults::install(&lab.plan).expect("nft");
        runner::start_backends(&mut lab, 10_000).expect("backends");
        let client = lab.plan.host("client1").expect("client").ns.clone();
        let node = lab.plan.host("node1").expect("node1").addr();
        let body = ns::exec(
            &client,
            &[
                "bash",
                "-c",
                &format!("exec 3<>/dev/tcp/{node}/80; printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3"),
            ],
        )
        .expect("http from the client");
        assert!(body.starts_with("HTTP/1.1 200") && body.trim_end().ends_with("node1"), "{body}");
        // Load straight at node1 for 3 s; node1 stops answering from 1.0 to 1.8 s.
        let out = d.join("load.csv");
        let args: Vec<String> = vec![
            "load".into(),
            format!("{node}:80"),
            format!("{node}:{STREAM_PORT}"),
            "100".into(),
            "3000".into(),
            "2".into(),
            out.display().to_string(),
        ];
        let t0 = clusterlab::traffic::unix_ms();
        lab.spawn("client1/load", "client1", Path::new(env!("CARGO_BIN_EXE_clusterlab")), &args)
            .expect("load");
        std::thread::sleep(Duration::from_millis(1000));
        faults::server(&lab.plan, "node1", true).expect("server down");
        std::thread::sleep(Duration::from_millis(800));
        faults::server(&lab.plan, "node1", false).expect("server up");
        assert!(lab.wait_or_kill("client1/load", 8000).expect("wait").is_some_and(|s| s.success()));
        let r = ClientResult::parse(&std::fs::read_to_string(&out).expect("load output"));
        let outage = r.outage_ms(100);
        assert!((600..=1500).contains(&outage), "outage {outage} ms for an 800 ms server stop");
        assert_eq!(r.flows, 2);
        assert_eq!(r.flows_lost, 0, "{:?}", r.flow_notes);
        assert_eq!(r.by_server().keys().collect::<Vec<_>>(), vec!["node1"]);
        // A partition between the client and node2 cuts it; heal restores it.
        let n2 = lab.plan.host("node2").expect("node2").addr().to_string();
        faults::partition(&lab.plan, &[vec!["client1".into()], vec!["node2".into()]]).expect("partition");
        assert!(ns::exec(&client, &["ping", "-c1", "-W1", &n2]).is_err(), "partition did not cut");
        faults::heal(&lab.plan).expect("heal");
        ns::exec(&client, &["ping", "-c1", "-W1", &n2]).expect("healed");
        // The report and chart are written from real figures.
        let results = vec![("client1".to_string(), r)];
        let empty = std::collections::BTreeMap::new();
        let lo = report::outcome(
            &s,
            t0,
            3000,
            &results,
            &empty,
            &empty,
            &Default::default(),
            Default::default(),
            vec![(1000, "fault: server_down node1".into())],
            &d,
        );
        report::write(&lo).expect("report");
        assert!(std::fs::read_to_string(d.join("chart.svg")).expect("chart").contains("<polyline"));
        assert!(lab.plan.of_role(Role::Node).len() == 2);
    }
    assert!(mine(&run_id).is_empty(), "namespaces left behind: {:?}", mine(&run_id));
    assert!(procs_using(&d).is_empty(), "processes left behind: {:?}", procs_using(&d));
}

/// The real daemon end to end. Until `clusterserverd` runs (it refuses with "not yet
/// implemented"), the lab run fails clearly; this test then reports it LOUDLY and stops.
#[test]
fn primary_crash_in_the_lab() {
    if !can_run() {
        return;
    }
    runner::set_helper_exe(PathBuf::from(env!("CARGO_BIN_EXE_clusterlab")));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sim/scenarios/primary-crash.json5");
    let mut s = Scenario::from_file(&path).expect("scenario");
    s.duration_ms = Some(12_000);
    // Generous bounds: a real kernel on a shared 2-core VM.
    s.expect.max_outage_ms = Some(3000);
    let d = dir("primary-crash");
    let lo = match runner::run(&s, &d) {
        Ok(lo) => lo,
        Err(e) if format!("{e:#}").contains("not yet implemented") => {
            println!("SKIPPED: clusterserverd is not implemented yet on this branch: {e:#}");
            eprintln!("SKIPPED: clusterserverd is not implemented yet on this branch: {e:#}");
            return;
        }
        Err(e) => panic!("lab run failed: {e:#}"),
    };
    report::write(&lo).expect("report");
    assert!(procs_using(&d).is_empty(), "processes left behind: {:?}", procs_using(&d));
    let o = &lo.outcome;
    assert!(o.passed(), "{}", report::summary(&lo));
    assert_eq!(o.primaries.last().map(|p| p.1.as_str()), Some("atm2"));
    assert_eq!(o.long_lived_lost, 0);
}

/// Real servers fail three ways (nginx killed, ports blocked, the ASA check returning 1) and
/// recover: each leaves the scheduler after `fall` checks and rejoins after `rise`.
#[test]
fn failed_servers_leave_and_rejoin_in_the_lab() {
    if !can_run() {
        return;
    }
    runner::set_helper_exe(PathBuf::from(env!("CARGO_BIN_EXE_clusterlab")));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sim/scenarios/server-failures.json5");
    let s = Scenario::from_file(&path).expect("scenario");
    let d = dir("server-failures");
    let lo = runner::run(&s, &d).unwrap_or_else(|e| panic!("lab run failed: {e:#}"));
    report::write(&lo).expect("report");
    assert!(procs_using(&d).is_empty(), "processes left behind: {:?}", procs_using(&d));
    let o = &lo.outcome;
    assert!(o.passed(), "{}", report::summary(&lo));
    let got: Vec<(&str, bool)> = o.health.iter().map(|h| (h.server.as_str(), h.failing)).collect();
    let want = [
        ("node1", true),
        ("node1", false),
        ("node2", true),
        ("node2", false),
        ("node3", true),
        ("node3", false),
    ];
    assert_eq!(got, want, "{}", report::summary(&lo));
    for h in &o.health {
        let after = h.after_ms.unwrap_or_else(|| panic!("{h:?}: no figure\n{}", report::summary(&lo)));
        if h.failing {
            // The failure was seen: the server took connections (or failed them) for a while.
            assert!(after > 0, "{h:?}: nothing reached {} after it failed", h.server);
        }
    }
    // node3 kept serving while its ASA check failed: it answered requests after the fault.
    let daemon_log = std::fs::read_to_string(d.join("atm1-daemon.log")).expect("atm1 log");
    for needle in ["server down service=svc server=node3", "output=\"flag file set: failing on purpose\""] {
        assert!(daemon_log.contains(needle), "atm1's log lacks {needle:?}");
    }
}

/// Operator steps through the admin channel: `demote` hands the VIP from atm1 to atm2 with
/// no dead interval, `promote` takes it back (`cmc` run in the ATM's namespace).
#[test]
fn operator_demote_and_promote_in_the_lab() {
    if !can_run() {
        return;
    }
    runner::set_helper_exe(PathBuf::from(env!("CARGO_BIN_EXE_clusterlab")));
    let s = scenario(
        "{ name: 'operator', topology: { atms: 2, nodes: 2, clients: 1, forwarding: 'nat' },
           load: { kind: 'tcp', connections_per_s: 50 },
           steps: [ { at_ms: 3000, demote: 'atm1' }, { at_ms: 6000, promote: 'atm1' } ],
           duration_ms: 9000,
           expect: { max_outage_ms: 3000, final_primary: 'atm1' } }",
    );
    let d = dir("operator");
    let lo = runner::run(&s, &d).unwrap_or_else(|e| panic!("lab run failed: {e:#}"));
    report::write(&lo).expect("report");
    assert!(procs_using(&d).is_empty(), "processes left behind: {:?}", procs_using(&d));
    let o = &lo.outcome;
    assert!(o.passed(), "{}", report::summary(&lo));
    // An operator's promote while another ATM is primary takes a higher epoch; the other
    // steps down on its first heartbeat, so both hold the role for about a millisecond
    // (seen: 1 ms). Bounded here, and left out of the order.
    for w in o.primaries.windows(2) {
        if w[0].1.contains('+') {
            assert!(w[1].0 - w[0].0 < 200, "two primaries for {} ms: {:?}", w[1].0 - w[0].0, o.primaries);
        }
    }
    let mut order: Vec<&str> =
        o.primaries.iter().map(|p| p.1.as_str()).filter(|p| !p.contains('+')).collect();
    order.dedup();
    assert_eq!(
        order,
        ["atm1", "atm2", "atm1"],
        "primaries over time: {:?}\n{}",
        o.primaries,
        report::summary(&lo)
    );
}

/// Seed 003's config sync with running daemons over real sshd: a config edited and reloaded
/// on atm1 shows as a digest mismatch in `cmc status` on both ATMs until `cmc sync config
/// --apply` pushes it and reloads them (see `clusterlab::config_sync`).
#[test]
fn config_sync_shows_the_mismatch_until_pushed_in_the_lab() {
    if !can_run() {
        return;
    }
    let d = dir("config-sync");
    let r = clusterlab::config_sync::run(&d).unwrap_or_else(|e| panic!("config-sync lab failed: {e:#}"));
    for l in &r.lines {
        eprintln!("{l}");
    }
    assert_eq!(r.lines.iter().filter(|l| l.starts_with(char::is_numeric)).count(), 5, "{:?}", r.lines);
    assert!(procs_using(&d).is_empty(), "processes left behind: {:?}", procs_using(&d));
}
