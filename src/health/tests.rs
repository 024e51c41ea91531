//! Table tests: (time, result) rows in, transitions out, compared as text.

use super::*;
use crate::config::{CheckKind, Forwarding, SchedulerKind, testkit};
use core::net::Ipv4Addr;

fn check(interval_ms: u64, rise: u32, fall: u32) -> Check {
    Check { interval_ms, timeout_ms: interval_ms / 2, rise, fall, ..testkit::check(CheckKind::Tcp) }
}

fn service(servers: usize, checks: Vec<Check>) -> Service {
    let servers =
        (0..servers).map(|i| testkit::server(&format!("s{i}"), Ipv4Addr::new(10, 0, 0, 10 + i as u8), 80, 1));
    Service::builder("web", Ipv4Addr::new(10, 0, 0, 99), 80)
        .forwarding(Forwarding::Dr)
        .scheduler(SchedulerKind::Rr)
        .servers(servers)
        .checks(checks)
        .build()
}

fn ms(t: u64) -> Instant {
    Instant::from_millis(t)
}

/// Drains actions: runs every due check at once with `verdict(probe)`, and writes each
/// transition as `T ms: server S up|down check C reason R`.
fn drain(h: &mut Health, now: Instant, verdict: &dyn Fn(ProbeId) -> bool, log: &mut Vec<String>) {
    let mut results = Vec::new();
    while let Some(a) = h.poll_action() {
        match a {
            Action::RunCheck { probe, .. } => results.push(probe),
            Action::Transition(t) => log.push(format!(
                "{} ms: server {} {} check {} reason {}",
                now.as_millis(),
                t.server,
                if t.up { "up" } else { "down" },
                t.check,
                t.reason
            )),
        }
    }
    for probe in results {
        let outcome = if verdict(probe) {
            Outcome::Pass { latency: Duration::from_millis(3) }
        } else {
            Outcome::Fail { latency: Duration::from_millis(1), reason: "connection refused".into() }
        };
        h.handle(now, Input::Result { probe, outcome });
        drain(h, now, verdict, log);
    }
}

/// Runs the machine from 0 to `end_ms`, waking at every `poll_timeout`; a probe of server
/// `s` passes unless some (from, to, s) in `down` covers the time.
fn run(svc: &Service, damping: Damping, down: &[(u64, u64, usize)], end_ms: u64) -> Vec<String> {
    let mut h = Health::new(std::slice::from_ref(svc), damping, ms(0));
    let mut log = Vec::new();
    let mut now = ms(0);
    h.handle(now, Input::Tick);
    loop {
        let t = now.as_millis();
        let verdict = |p: ProbeId| !down.iter().any(|(a, b, s)| *s == p.server && (*a..*b).contains(&t));
        drain(&mut h, now, &verdict, &mut log);
        match h.poll_timeout() {
            Some(next) if next.as_millis() <= end_ms => now = next,
            _ => break,
        }
        h.handle(now, Input::Tick);
    }
    log
}

#[test]
fn fall_and_rise_counts() {
    // Checks every 1000 ms, rise 2, fall 3; server 1 fails from 2500 to 6500 ms.
    let svc = service(2, vec![check(1000, 2, 3)]);
    let log = run(&svc, Damping::default(), &[(2500, 6500, 1)], 12_000);
    // Failures at 3000, 4000, 5000 (down on the third), 6000; passes at 7000, 8000 (up).
    assert_eq!(
        log,
        [
            "5000 ms: server 1 down check 0 reason connection_refused",
            "8000 ms: server 1 up check 0 reason 2_passes"
        ]
    );
}

#[test]
fn an_interrupted_streak_starts_again() {
    let svc = service(1, vec![check(1000, 2, 3)]);
    let down = [(900, 2100, 0), (2900, 5100, 0)];
    let log = run(&svc, Damping::default(), &down, 10_000);
    // 1000, 2000 and 3000 fail (three in a row: down), 4000 and 5000 fail, 6000 and 7000
    // pass (up).
    assert_eq!(
        log,
        [
            "3000 ms: server 0 down check 0 reason connection_refused",
            "7000 ms: server 0 up check 0 reason 2_passes"
        ]
    );
    // fall 3: fail, fail, pass, fail, fail never reaches three in a row.
    let down = [(900, 2100, 0), (3900, 5100, 0)];
    // 1000, 2000 fail; 3000 passes (streak reset); 4000, 5000 fail; 6000 passes: never down.
    assert!(run(&svc, Damping::default(), &down, 10_000).is_empty());
}

#[test]
fn a_server_is_up_only_if_every_check_is() {
    // Two checks: the fast one (500 ms, fall 2) brings it down, the slow one (2000 ms,
    // fall 1) already agrees; it comes back once both have risen.
    let svc = service(1, vec![check(500, 1, 2), check(2000, 1, 1)]);
    let log = run(&svc, Damping::default(), &[(1200, 4100, 0)], 9000);
    // Fast probe fails at 1500, 2000 -> down at 2000 (check 0). Slow fails at 2000 too,
    // then passes at 6000; fast passes at 4500. Up when the slow one passes.
    assert_eq!(
        log,
        [
            "2000 ms: server 0 down check 0 reason connection_refused",
            "6000 ms: server 0 up check 1 reason 1_passes"
        ]
    );
}

#[test]
fn flapping_is_held_down() {
    // rise 1, fall 1, checks every 1000 ms: three short failures in a row of seconds.
    let svc = service(1, vec![check(1000, 1, 1)]);
    let down = [(900, 1100, 0), (2900, 3100, 0), (4900, 5100, 0)];
    let log = run(&svc, Damping::default(), &down, 60_000);
    // 1st down at 1000 (penalty 1000), up at 2000 (950 <= suppress). 2nd down at 3000:
    // 900 + 1000 = 1900, recovers at 4000 with 1850 > 1500: held until 500, i.e. 27 s
    // later (1350 / 50) = 31000 ms; the third failure at 5000 during the hold keeps it down
    // and re-arms the penalty: 1800 + 1000 = 2800 at 5000, recovery at 6000 with 2750:
    // held (2750 - 500) / 50 = 45 s, until 51000.
    assert_eq!(
        log,
        [
            "1000 ms: server 0 down check 0 reason connection_refused",
            "2000 ms: server 0 up check 0 reason 1_passes",
            "3000 ms: server 0 down check 0 reason connection_refused",
            "51000 ms: server 0 up check 0 reason flap_hold_ended",
        ]
    );
}

#[test]
fn damping_off_lets_every_flip_through() {
    let svc = service(1, vec![check(1000, 1, 1)]);
    let down = [(900, 1100, 0), (2900, 3100, 0), (4900, 5100, 0)];
    let none = Damping { suppress: u32::MAX, ..Damping::default() };
    assert_eq!(run(&svc, none, &down, 10_000).len(), 6);
}

#[test]
fn counters_and_timeouts() {
    let svc = service(1, vec![check(1000, 2, 2)]);
    let mut h = Health::new(std::slice::from_ref(&svc), Damping::default(), ms(0));
    h.handle(ms(0), Input::Tick);
    let probe = ProbeId { service: 0, server: 0, check: 0 };
    assert_eq!(h.poll_action(), Some(Action::RunCheck { probe, timeout: Duration::from_millis(500) }));
    assert_eq!(h.poll_action(), None);
    // In flight: not due again, whatever the time.
    assert_eq!(h.poll_timeout(), None);
    h.handle(ms(1500), Input::Tick);
    assert_eq!(h.poll_action(), None);
    h.handle(ms(1600), Input::Result { probe, outcome: Outcome::Timeout });
    // The run was started at 0: due at 1000, so it runs again now.
    assert!(matches!(h.poll_action(), Some(Action::RunCheck { .. })));
    let pass = Outcome::Pass { latency: Duration::from_millis(7) };
    h.handle(ms(1700), Input::Result { probe, outcome: pass });
    let s = h.stats(probe).expect("probe");
    assert_eq!((s.passes, s.failures, s.timeouts), (1, 1, 1));
    assert_eq!(s.latency_max, Duration::from_millis(500));
    assert_eq!(s.latency_last, Duration::from_millis(7));
    assert_eq!(s.latency_sum, Duration::from_millis(507));
    assert_eq!(h.is_up(0, 0), Some(true));
    assert_eq!(h.poll_timeout(), Some(ms(2600)));
}

#[test]
fn results_of_unknown_probes_are_ignored_and_no_checks_means_no_timeout() {
    let svc = service(2, Vec::new());
    let mut h = Health::new(std::slice::from_ref(&svc), Damping::default(), ms(0));
    h.handle(ms(0), Input::Tick);
    assert_eq!(h.poll_action(), None);
    assert_eq!(h.poll_timeout(), None);
    let probe = ProbeId { service: 0, server: 0, check: 3 };
    h.handle(ms(5), Input::Result { probe, outcome: Outcome::Timeout });
    assert_eq!(h.poll_action(), None);
    assert_eq!(h.is_up(0, 1), Some(true));
}

#[test]
fn penalty_decays_linearly() {
    let svc = service(1, vec![check(1000, 1, 1)]);
    let log = run(&svc, Damping::default(), &[(900, 1100, 0)], 3000);
    assert_eq!(log.len(), 2);
    let mut h = Health::new(std::slice::from_ref(&svc), Damping::default(), ms(0));
    h.handle(ms(0), Input::Tick);
    let probe = ProbeId { service: 0, server: 0, check: 0 };
    while h.poll_action().is_some() {}
    let fail = Outcome::Fail { latency: Duration::ZERO, reason: "x".into() };
    h.handle(ms(100), Input::Result { probe, outcome: fail });
    assert_eq!(h.penalty(0, 0, ms(100)), Some(1000));
    assert_eq!(h.penalty(0, 0, ms(10_100)), Some(500));
    assert_eq!(h.penalty(0, 0, ms(100_000)), Some(0));
}

fn config_with(services: Vec<Service>) -> crate::config::Config {
    let opts = crate::config::LoadOptions { check_files: false, base_dir: "/etc/clusterserver".into() };
    let text = include_str!("../../config/nat-2atm.json5");
    let mut c = crate::config::parse_str("nat-2atm.json5", text, &opts).expect("example config");
    c.services = services;
    c
}

#[test]
fn a_reload_keeps_unchanged_probes_and_a_new_server_enters_after_rise() {
    let old = service(2, vec![check(1000, 2, 3)]);
    let mut h = Health::new(std::slice::from_ref(&old), Damping::default(), ms(0));
    let mut log = Vec::new();
    h.handle(ms(0), Input::Tick);
    // Server 1 fails three times: down.
    for t in [0, 1000, 2000] {
        h.handle(ms(t), Input::Tick);
        drain(&mut h, ms(t), &|p| p.server != 1, &mut log);
    }
    assert_eq!(log, ["2000 ms: server 1 down check 0 reason connection_refused"]);
    let before = h.stats(ProbeId { service: 0, server: 0, check: 0 }).expect("probe");
    // Reload: server 0 removed, servers 1 (still down) and a new server 2 stay/join.
    let mut new = service(3, vec![check(1000, 2, 3)]);
    new.servers.remove(0);
    let remap =
        crate::config::diff::Remap::between(&config_with(vec![old.clone()]), &config_with(vec![new.clone()]));
    h.reconfigure(ms(2500), std::slice::from_ref(&old), std::slice::from_ref(&new), &remap);
    assert_eq!(h.is_up(0, 0), Some(false), "the failed server stays down under its new index");
    assert_eq!(h.is_up(0, 1), Some(false), "a new server waits for its checks");
    assert_eq!(h.stats(ProbeId { service: 0, server: 0, check: 0 }).map(|s| s.failures), Some(3));
    assert!(before.passes >= 3);
    // Everything passes from now on: the new server needs `rise` passes, the old one too.
    let mut log = Vec::new();
    let mut now = ms(2500);
    while now.as_millis() <= 6000 {
        h.handle(now, Input::Tick);
        drain(&mut h, now, &|_| true, &mut log);
        now = h.poll_timeout().expect("checks pending");
    }
    // The new probe runs at once (2500, 3500); the kept one stays on its schedule (3000, 4000).
    assert_eq!(
        log,
        ["3500 ms: server 1 up check 0 reason 2_passes", "4000 ms: server 0 up check 0 reason 2_passes"]
    );
}
