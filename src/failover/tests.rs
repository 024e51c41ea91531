//! The failover machine alone (tables of inputs and the actions they give) and two machines
//! wired together by a small deterministic world (heartbeats, commands that take time, crashes,
//! partitions decided by the reachlist), checked against the rule that no service ever runs
//! on two ATMs at once.

use proptest::prelude::*;

use super::*;
use crate::config::{Failover as FailoverConfig, GroupService, MirrorSet, ServiceGroup};

fn svc(name: &str, order: u32) -> GroupService {
    GroupService {
        name: name.into(),
        start_order: order,
        stop_order: 99 - order,
        start: vec![format!("S{order}{name}")],
        stop: vec![format!("K{}{name}", 99 - order)],
        timeout_ms: 1000,
    }
}

/// atm0 is home of "named, dhcpd, lpd" with atm1 as backup, and one mirror set.
fn config() -> FailoverConfig {
    FailoverConfig {
        takeover_delay_ms: 2000,
        retry_ms: 500,
        start_attempts: 3,
        ssh: None,
        groups: vec![ServiceGroup {
            atm: 0,
            backup: 1,
            atm_name: "atm1".into(),
            backup_name: "atm2".into(),
            services: vec![svc("lpd", 40), svc("named", 20), svc("dhcpd", 30)],
            mirrors: vec![MirrorSet {
                name: "lpd".into(),
                paths: vec!["/var/spool/lpd/".into()],
                interval_s: 0,
            }],
        }],
    }
}

fn timing() -> Timing {
    Timing::from_config(&config(), Duration::from_millis(300))
}

fn ms(t: u64) -> Instant {
    Instant::from_millis(t)
}

fn drain(m: &mut Failover) -> Vec<Action> {
    std::iter::from_fn(|| m.poll_action()).collect()
}

/// Runs every command and copy of `m` at once with success, until it waits; returns the
/// commands' argv[0] and the events, in order.
fn settle(m: &mut Failover, now: Instant) -> Vec<String> {
    let mut log = Vec::new();
    for _ in 0..100 {
        let actions = drain(m);
        if actions.is_empty() {
            return log;
        }
        for a in actions {
            match a {
                Action::Run { id, argv, .. } => {
                    log.push(argv[0].clone());
                    m.handle(now, Input::CommandDone { id, ok: true });
                }
                Action::Mirror { id, set, to, .. } => {
                    log.push(format!("mirror {set} -> atm{to}"));
                    m.handle(now, Input::MirrorDone { id, ok: true });
                }
                Action::Arbitrate => {
                    log.push("arbitrate".into());
                    m.handle(now, Input::Arbitrated { ok: true });
                }
                Action::Event(e) => log.push(format!("{e:?}")),
            }
        }
    }
    panic!("did not settle: {log:?}");
}

#[test]
fn home_starts_in_s_order_after_the_grace_when_the_backup_holds_nothing() {
    let mut m = Failover::new(&config(), 0, 2, timing(), ms(0));
    m.handle(ms(50), Input::Peer { atm: 1, up: true, holding: 0 });
    assert!(drain(&mut m).is_empty(), "must wait the grace: the backup may be taking over");
    assert_eq!(m.poll_timeout(), Some(ms(300)));
    m.handle(ms(300), Input::Tick);
    let log = settle(&mut m, ms(300));
    assert_eq!(
        log,
        [
            "S20named",
            "Started { group: 0, service: 1 }",
            "S30dhcpd",
            "Started { group: 0, service: 2 }",
            "S40lpd",
            "Started { group: 0, service: 0 }",
            "GroupUp { group: 0, failed: 0 }",
        ]
    );
    assert_eq!(m.holding(), 0, "the home holds nothing: running its own group is normal");
}

#[test]
fn restarted_home_waits_while_the_backup_holds_its_group() {
    let mut m = Failover::new(&config(), 0, 2, timing(), ms(0));
    m.handle(ms(50), Input::Peer { atm: 1, up: true, holding: 0b1 });
    m.handle(ms(5000), Input::Tick);
    assert!(drain(&mut m).is_empty());
    m.handle(ms(5100), Input::Peer { atm: 1, up: true, holding: 0 });
    assert!(settle(&mut m, ms(5100)).contains(&"GroupUp { group: 0, failed: 0 }".to_string()));
}

#[test]
fn backup_takes_over_after_the_delay_and_hands_back_in_k_order_with_a_mirror() {
    let mut m = Failover::new(&config(), 1, 2, timing(), ms(0));
    m.handle(ms(10), Input::Peer { atm: 0, up: true, holding: 0 });
    m.handle(ms(1000), Input::Peer { atm: 0, up: false, holding: 0 });
    assert_eq!(m.poll_timeout(), Some(ms(3000)));
    m.handle(ms(2999), Input::Tick);
    assert!(drain(&mut m).is_empty(), "not before the takeover delay");
    m.handle(ms(3000), Input::Tick);
    let log = settle(&mut m, ms(3000));
    assert_eq!(log[..2], ["arbitrate", "Takeover { group: 0 }"], "a fresh probe round first");
    assert_eq!(m.holding(), 0b1);
    m.handle(ms(9000), Input::Peer { atm: 0, up: true, holding: 0 });
    let log = settle(&mut m, ms(9000));
    let expected = [
        "HandBack { group: 0 }",
        "K59lpd",
        "Stopped { group: 0, service: 0, ok: true }",
        "K69dhcpd",
        "Stopped { group: 0, service: 2, ok: true }",
        "K79named",
        "Stopped { group: 0, service: 1, ok: true }",
        "GroupDown { group: 0 }",
        "mirror 0 -> atm0",
        "Mirrored { group: 0, set: 0, to: 0, ok: true }",
        "HandedBack { group: 0 }",
    ];
    assert_eq!(log, expected);
    assert_eq!(m.holding(), 0);
}

#[test]
fn backup_that_fails_a_fresh_arbitration_does_not_take_over() {
    let mut m = Failover::new(&config(), 1, 2, timing(), ms(0));
    m.handle(ms(10), Input::Peer { atm: 0, up: true, holding: 0 });
    m.handle(ms(1000), Input::Peer { atm: 0, up: false, holding: 0 });
    m.handle(ms(3000), Input::Tick);
    assert_eq!(drain(&mut m), [Action::Arbitrate]);
    m.handle(ms(3200), Input::Arbitrated { ok: false });
    assert_eq!(drain(&mut m), [Action::Event(Event::ArbitrationFailed)]);
    assert_eq!(m.poll_timeout(), Some(ms(3700)), "asks again after retry_ms");
    m.handle(ms(3700), Input::Tick);
    assert_eq!(drain(&mut m), [Action::Arbitrate]);
    m.handle(ms(3900), Input::Arbitrated { ok: true });
    let first = drain(&mut m).into_iter().next();
    assert_eq!(first, Some(Action::Event(Event::Takeover { group: 0 })));
}

#[test]
fn backup_in_standby_never_takes_over() {
    let mut m = Failover::new(&config(), 1, 2, timing(), ms(0));
    m.handle(ms(10), Input::Peer { atm: 0, up: true, holding: 0 });
    m.handle(ms(500), Input::Standby(true));
    m.handle(ms(1000), Input::Peer { atm: 0, up: false, holding: 0 });
    m.handle(ms(60_000), Input::Tick);
    assert_eq!(settle(&mut m, ms(60_000)), ["Standby { on: true }"]);
    assert_eq!(m.holding(), 0);
}

#[test]
fn failed_start_is_reported_retried_then_given_up_and_the_group_goes_on() {
    let mut m = Failover::new(&config(), 0, 2, timing(), ms(0));
    m.handle(ms(300), Input::Tick);
    let mut now = 300;
    let mut log = Vec::new();
    for _ in 0..20 {
        for a in drain(&mut m) {
            match a {
                Action::Run { id, argv, .. } => {
                    log.push(argv[0].clone());
                    m.handle(ms(now), Input::CommandDone { id, ok: argv[0] != "S30dhcpd" });
                }
                Action::Event(e) => log.push(format!("{e:?}")),
                Action::Arbitrate => m.handle(ms(now), Input::Arbitrated { ok: true }),
                Action::Mirror { .. } => panic!("no mirror expected"),
            }
        }
        if let Some(t) = m.poll_timeout() {
            now = t.as_millis();
            m.handle(t, Input::Tick);
        }
    }
    let failures: Vec<&String> = log.iter().filter(|l| l.starts_with("StartFailed")).collect();
    assert_eq!(failures.len(), 3, "{log:?}");
    assert!(failures[2].contains("gave_up: true") && failures[0].contains("gave_up: false"));
    assert_eq!(log.iter().filter(|l| *l == "S30dhcpd").count(), 3);
    assert!(log.contains(&"GroupUp { group: 0, failed: 1 }".to_string()), "{log:?}");
    assert_eq!(log.last().map(String::as_str), Some("GroupUp { group: 0, failed: 1 }"));
}

#[test]
fn standby_home_stops_everything_in_k_order() {
    let mut m = Failover::new(&config(), 0, 2, timing(), ms(0));
    m.handle(ms(10), Input::Peer { atm: 1, up: true, holding: 0 });
    m.handle(ms(300), Input::Tick);
    settle(&mut m, ms(300));
    m.handle(ms(400), Input::Standby(true));
    let log = settle(&mut m, ms(400));
    let stops: Vec<&String> = log.iter().filter(|l| l.starts_with('K')).collect();
    assert_eq!(stops, ["K59lpd", "K69dhcpd", "K79named"]);
    assert!(!log.iter().any(|l| l.starts_with("mirror")), "the home mirrors nothing back");
}

// ---- two machines in a small world ----

const HEARTBEAT_MS: u64 = 100;
const DEAD_MS: u64 = 300;
/// How long an isolated ATM takes to find it has lost the reachlist.
const STANDBY_DETECT_MS: u64 = 500;
const STEP_MS: u64 = 10;
/// A freshly started ATM knows its reachlist score after one probe round.
const PROBE_ROUND_MS: u64 = 200;

#[derive(Clone, Copy, Debug)]
enum Fault {
    Crash(usize),
    Restart(usize),
    /// The ATM is cut from the other and from the reachlist.
    Isolate(usize),
    Heal,
}

struct Atm {
    m: Option<Failover>,
    /// Results due: (at, input).
    pending: Vec<(u64, Input)>,
    last_heard: Option<u64>,
    peer_up: bool,
    isolated_since: Option<u64>,
    started: u64,
    /// A probe round in progress: when it answers.
    arbitrating: Option<u64>,
}

struct World {
    cfg: FailoverConfig,
    atms: [Atm; 2],
    now: u64,
    cmd_ms: u64,
    /// Start commands of these service indices fail.
    failing: Vec<usize>,
    /// (group service) -> ATMs it may run on now; checked every step.
    violations: Vec<String>,
    trace: Vec<String>,
}

impl World {
    fn new(cmd_ms: u64, failing: Vec<usize>) -> World {
        let cfg = config();
        let atm = |i| Atm {
            m: Some(Failover::new(&cfg, i, 2, timing(), ms(0))),
            pending: Vec::new(),
            last_heard: None,
            peer_up: false,
            isolated_since: None,
            started: 0,
            arbitrating: None,
        };
        World {
            atms: [atm(0), atm(1)],
            cfg,
            now: 0,
            cmd_ms,
            failing,
            violations: Vec::new(),
            trace: Vec::new(),
        }
    }

    fn connected(&self) -> bool {
        self.atms.iter().all(|a| a.m.is_some() && a.isolated_since.is_none())
    }

    fn fault(&mut self, f: Fault) {
        self.trace.push(format!("{} {f:?}", self.now));
        match f {
            // A crash takes the ATM's services with it.
            Fault::Crash(i) => {
                self.atms[i].m = None;
                self.atms[i].pending.clear();
            }
            Fault::Restart(i) if self.atms[i].m.is_none() => {
                self.atms[i].m = Some(Failover::new(&self.cfg, i, 2, timing(), ms(self.now)));
                self.atms[i].last_heard = None;
                self.atms[i].peer_up = false;
                self.atms[i].started = self.now;
                self.atms[i].arbitrating = None;
            }
            Fault::Restart(_) => {}
            Fault::Isolate(i) => {
                if self.atms[1 - i].isolated_since.is_none() {
                    self.atms[i].isolated_since.get_or_insert(self.now);
                }
            }
            Fault::Heal => {
                for a in &mut self.atms {
                    a.isolated_since = None;
                }
            }
        }
    }

    fn step(&mut self) {
        self.now += STEP_MS;
        let now = self.now;
        let connected = self.connected();
        let holding: Vec<u16> = self.atms.iter().map(|a| a.m.as_ref().map_or(0, Failover::holding)).collect();
        for i in 0..2 {
            let a = &mut self.atms[i];
            let Some(m) = a.m.as_mut() else { continue };
            if connected && now % HEARTBEAT_MS == 0 {
                a.last_heard = Some(now);
                a.peer_up = true;
                m.handle(ms(now), Input::Peer { atm: 1 - i, up: true, holding: holding[1 - i] });
            }
            if a.peer_up && a.last_heard.is_some_and(|t| now >= t + DEAD_MS) {
                a.peer_up = false;
                m.handle(ms(now), Input::Peer { atm: 1 - i, up: false, holding: 0 });
            }
            // Standby until the first probe round is in (the election's "unknown" reach),
            // then while isolated, found after a few lost probes (at once if it was
            // isolated before it started).
            let probing = now < a.started + PROBE_ROUND_MS;
            let started = a.started;
            let found =
                |t: u64| now >= if t <= started { started + PROBE_ROUND_MS } else { t + STANDBY_DETECT_MS };
            let standby = probing || a.isolated_since.is_some_and(found);
            m.handle(ms(now), Input::Standby(standby));
            // A probe round passes when the ATM was not isolated at any point of it.
            if let Some(t) = a.arbitrating.filter(|&t| t <= now) {
                a.arbitrating = None;
                let ok = a.isolated_since.is_none_or(|s| s > t);
                m.handle(ms(now), Input::Arbitrated { ok: ok && a.isolated_since.is_none() });
            }
            let (due, later): (Vec<_>, Vec<_>) = a.pending.drain(..).partition(|(t, _)| *t <= now);
            a.pending = later;
            for (_, input) in due {
                m.handle(ms(now), input);
            }
            m.handle(ms(now), Input::Tick);
            if let Some(t) = m.poll_timeout().filter(|&t| t <= ms(now)) {
                self.violations
                    .push(format!("{now}: atm{i} asks for a tick at {t:?}, not later: a driver would spin"));
            }
            while let Some(action) = m.poll_action() {
                match action {
                    Action::Run { id, service, step, .. } => {
                        let ok = step == Step::Stop || !self.failing.contains(&service);
                        a.pending.push((now + self.cmd_ms, Input::CommandDone { id, ok }));
                    }
                    Action::Mirror { id, .. } => {
                        a.pending.push((now + self.cmd_ms, Input::MirrorDone { id, ok: connected }));
                    }
                    Action::Arbitrate => a.arbitrating = Some(now + PROBE_ROUND_MS),
                    Action::Event(e) => self.trace.push(format!("{now} atm{i} {e:?}")),
                }
            }
        }
        self.check();
    }

    fn may_run(&self, atm: usize, service: usize) -> bool {
        self.atms[atm].m.as_ref().is_some_and(|m| m.may_run(0, service))
    }

    fn check(&mut self) {
        for s in 0..self.cfg.groups[0].services.len() {
            if self.may_run(0, s) && self.may_run(1, s) {
                self.violations.push(format!("{}: service {s} on both ATMs", self.now));
            }
        }
    }

    fn run_for(&mut self, duration_ms: u64) {
        for _ in 0..duration_ms / STEP_MS {
            self.step();
        }
    }
}

#[test]
fn crash_takeover_recovery_handback_never_runs_a_service_twice() {
    let mut w = World::new(50, Vec::new());
    w.run_for(2000);
    assert!((0..3).all(|s| w.may_run(0, s) && !w.may_run(1, s)), "{:#?}", w.trace);
    w.fault(Fault::Crash(0));
    w.run_for(5000);
    assert!((0..3).all(|s| w.may_run(1, s)), "backup took over: {:#?}", w.trace);
    w.fault(Fault::Restart(0));
    w.run_for(5000);
    assert!((0..3).all(|s| w.may_run(0, s) && !w.may_run(1, s)), "handed back: {:#?}", w.trace);
    assert!(w.trace.iter().any(|l| l.contains("HandedBack")));
    assert!(w.violations.is_empty(), "{:?}\n{:#?}", w.violations, w.trace);
}

#[test]
fn isolated_home_stops_before_the_backup_starts() {
    let mut w = World::new(50, Vec::new());
    w.run_for(2000);
    w.fault(Fault::Isolate(0));
    w.run_for(5000);
    assert!((0..3).all(|s| !w.may_run(0, s) && w.may_run(1, s)), "{:#?}", w.trace);
    w.fault(Fault::Heal);
    w.run_for(5000);
    assert!((0..3).all(|s| w.may_run(0, s) && !w.may_run(1, s)), "{:#?}", w.trace);
    assert!(w.violations.is_empty(), "{:?}\n{:#?}", w.violations, w.trace);
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        (0..2usize).prop_map(Fault::Crash),
        (0..2usize).prop_map(Fault::Restart),
        (0..2usize).prop_map(Fault::Isolate),
        Just(Fault::Heal),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any sequence of crashes, restarts and partitions (the reachlist deciding who is
    /// isolated), with slow or failing commands: no service runs on two ATMs at once, and
    /// once everything is back the home runs its group and the backup nothing.
    #[test]
    fn no_service_ever_runs_on_two_atms(
        faults in prop::collection::vec((fault(), 100..4000u64), 0..12),
        cmd_ms in 10..200u64,
        failing in prop::collection::vec(0..3usize, 0..2),
    ) {
        let mut w = World::new(cmd_ms, failing.clone());
        w.run_for(1000);
        for (f, after_ms) in faults {
            w.fault(f);
            w.run_for(after_ms);
        }
        w.fault(Fault::Heal);
        w.fault(Fault::Restart(0));
        w.fault(Fault::Restart(1));
        w.run_for(20_000);
        prop_assert!(w.violations.is_empty(), "{:?}\n{:#?}", w.violations, w.trace);
        for s in 0..3 {
            prop_assert!(!w.may_run(1, s), "backup still runs {s}: {:#?}", w.trace);
            // A start given up is still attempted (and may leave the service half-up):
            // what counts is that the home, not the backup, holds it.
            prop_assert!(w.may_run(0, s), "home does not run {s}: {:#?}", w.trace);
        }
    }
}

#[test]
fn home_keeps_running_when_its_backup_fails_unless_a_fresh_arbitration_fails() {
    let mut m = Failover::new(&config(), 0, 2, timing(), ms(0));
    m.handle(ms(10), Input::Peer { atm: 1, up: true, holding: 0 });
    m.handle(ms(300), Input::Tick);
    settle(&mut m, ms(300));
    m.handle(ms(1000), Input::Peer { atm: 1, up: false, holding: 0 });
    assert_eq!(drain(&mut m), [Action::Arbitrate], "which of the two failed?");
    m.handle(ms(1300), Input::Arbitrated { ok: true });
    assert!(drain(&mut m).is_empty(), "the backup failed: keep running");
    assert!((0..3).all(|s| m.may_run(0, s)));
    // Later the link goes again and this time the home is the one cut off.
    m.handle(ms(2000), Input::Peer { atm: 1, up: true, holding: 0 });
    m.handle(ms(3000), Input::Peer { atm: 1, up: false, holding: 0 });
    assert_eq!(drain(&mut m), [Action::Arbitrate]);
    m.handle(ms(3300), Input::Arbitrated { ok: false });
    let log = settle(&mut m, ms(3300));
    assert_eq!(log.iter().filter(|l| l.starts_with('K')).count(), 3, "{log:?}");
    assert!((0..3).all(|s| !m.may_run(0, s)));
}

#[test]
fn running_group_mirrors_each_set_on_its_schedule_while_the_partner_is_up() {
    let mut cfg = config();
    cfg.groups[0].mirrors[0].interval_s = 60;
    let mut m = Failover::new(&cfg, 0, 2, timing(), ms(0));
    m.handle(ms(10), Input::Peer { atm: 1, up: true, holding: 0 });
    m.handle(ms(300), Input::Tick);
    settle(&mut m, ms(300));
    assert_eq!(m.poll_timeout(), Some(ms(60_300)), "the first copy an interval after start");
    m.handle(ms(60_300), Input::Tick);
    let actions = drain(&mut m);
    let [Action::Mirror { id, group: 0, set: 0, to: 1 }] = actions.as_slice() else {
        panic!("expected one copy to atm1: {actions:?}")
    };
    m.handle(ms(61_000), Input::MirrorDone { id: *id, ok: false });
    assert_eq!(drain(&mut m), [Action::Event(Event::Mirrored { group: 0, set: 0, to: 1, ok: false })]);
    assert_eq!(m.poll_timeout(), Some(ms(121_000)), "a failed copy is reported and waits its next turn");
    // No copy while the partner is down.
    m.handle(ms(100_000), Input::Peer { atm: 1, up: false, holding: 0 });
    m.handle(ms(100_300), Input::Arbitrated { ok: true });
    drain(&mut m);
    m.handle(ms(121_000), Input::Tick);
    assert!(drain(&mut m).iter().all(|a| !matches!(a, Action::Mirror { .. })));
}
