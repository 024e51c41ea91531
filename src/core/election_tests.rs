//! Table tests of the election rules: each test is a list of (time, input) rows and the
//! actions each row must produce, rendered as short strings (`hb` lines show role/epoch/flags).

use std::time::Duration;

use super::election::*;
use super::heartbeat::*;
use super::testkit;
use crate::time::Instant;

#[derive(Clone, Copy, Debug)]
enum In {
    Tick,
    /// Heartbeat from peer: (sender, primary?, epoch, flags, handover_to).
    Hb(u16, bool, u64, u16, u16),
    /// An eligible backup's heartbeat from a new incarnation of peer `0` (restarted).
    Reborn(u16, u64),
    Probe(usize, bool),
    Admin(AdminRequest),
    Shutdown,
}

const E: u16 = FLAG_ELIGIBLE;
const NONE: u16 = NO_HANDOVER;

fn cfg(me: usize, n: usize, reach: usize, preempt: bool) -> ElectionConfig {
    ElectionConfig {
        preempt,
        reach_total: reach,
        min_reachable: u32::from(reach > 0),
        ..testkit::election(me, n)
    }
}

fn render(a: &Action) -> String {
    match a {
        Action::SendHeartbeat(h) => {
            let role = if h.role == WireRole::Primary { "P" } else { "B" };
            let mut s = format!("hb {role}{}", h.epoch);
            if h.has(FLAG_ELIGIBLE) {
                s.push_str(" elig");
            }
            if h.has(FLAG_HANDOVER) {
                s.push_str(&format!(" handover->{}", h.handover_to));
            }
            if h.has(FLAG_WANTS_PRIMARY) {
                s.push_str(" wants");
            }
            s
        }
        Action::TakeVips(_) => "take".into(),
        Action::ReleaseVips(_) => "release".into(),
        Action::DrainVips(_) => "drain".into(),
        Action::SendGarp(_) => "garp".into(),
        Action::DropVips(_) => "drop".into(),
        Action::Probe { target } => format!("probe{target}"),
        Action::Event(ev) => format!("{ev:?}"),
        Action::Exit => "exit".into(),
    }
}

/// Runs rows against a fresh election and checks each row's rendered actions.
fn run(cfg: ElectionConfig, rows: &[(u64, In, &str)]) {
    let mut seqs = [0u64; 8];
    let mut e = Election::new(cfg, 1, Instant::ZERO);
    for (ms, input, want) in rows {
        let now = Instant::from_millis(*ms);
        match *input {
            In::Tick => e.handle_timeout(now),
            In::Hb(from, primary, epoch, flags, to) => {
                seqs[usize::from(from)] += 1;
                let hb = Heartbeat {
                    cluster_id: 7,
                    sender: from,
                    interval_ms: 0,
                    incarnation: 1,
                    seq: seqs[usize::from(from)],
                    epoch,
                    role: if primary { WireRole::Primary } else { WireRole::Backup },
                    flags,
                    reach_ok: 1,
                    reach_total: 1,
                    peers_up: 2,
                    handover_to: to,
                    holding: 0,
                    digest: [1; 16],
                };
                e.handle_heartbeat(now, &hb)
            }
            In::Reborn(from, incarnation) => {
                let hb = Heartbeat {
                    cluster_id: 7,
                    sender: from,
                    interval_ms: 0,
                    incarnation,
                    seq: 1,
                    epoch: 0,
                    role: WireRole::Backup,
                    flags: E,
                    reach_ok: 1,
                    reach_total: 1,
                    peers_up: 1,
                    handover_to: NONE,
                    holding: 0,
                    digest: [1; 16],
                };
                e.handle_heartbeat(now, &hb)
            }
            In::Probe(t, ok) => e.handle_probe(now, t, ok),
            In::Admin(r) => e.handle_admin(now, r),
            In::Shutdown => e.handle_shutdown(now),
        }
        let got: Vec<String> = std::iter::from_fn(|| e.poll_action()).map(|a| render(&a)).collect();
        assert_eq!(got.join(", "), *want, "at {ms} ms after {input:?}");
    }
}

#[test]
fn starts_backup_and_promotes_after_dead_interval() {
    run(
        cfg(0, 2, 0, false),
        &[
            (0, In::Tick, "hb B0 elig"),
            (100, In::Tick, "hb B0 elig"),
            (200, In::Tick, "hb B0 elig"),
            (299, In::Tick, ""),
            (300, In::Tick, "garp, take, hb P1 elig, Promoted { epoch: 1, reason: NoPrimary }"),
            (400, In::Tick, "garp, hb P1 elig"),
            (500, In::Tick, "hb P1 elig"),
        ],
    );
}

#[test]
fn backup_stays_while_primary_heard_then_takes_over() {
    run(
        cfg(1, 2, 0, false),
        &[
            (0, In::Tick, "hb B0 elig"),
            (50, In::Hb(0, true, 4, E, NONE), "PeerUp { peer: 0 }"),
            (100, In::Tick, "hb B4 elig"),
            (150, In::Hb(0, true, 4, E, NONE), ""),
            (400, In::Tick, "hb B4 elig"),
            (500, In::Tick, "hb B4 elig"),
            (600, In::Tick, "hb B4 elig"),
            // A new peer's link is not yet known to be clean: 5 heartbeats, not 3 (arbitration.rs).
            (649, In::Tick, ""),
            (
                650,
                In::Tick,
                "garp, take, PeerDown { peer: 0 }, hb P5 elig, Promoted { epoch: 5, reason: NoPrimary }",
            ),
        ],
    );
}

#[test]
fn lower_listed_atm_waits_its_rank() {
    // ATM 2 of 3 hears ATM 1 (eligible backup) but no primary: ATM 1 goes first; ATM 2
    // waits a second dead interval and promotes only if ATM 1 did not.
    run(
        cfg(2, 3, 0, false),
        &[
            (0, In::Hb(1, false, 0, E, NONE), "PeerUp { peer: 1 }, hb B0 elig"),
            (100, In::Hb(1, false, 0, E, NONE), "hb B0 elig"),
            (200, In::Hb(1, false, 0, E, NONE), "hb B0 elig"),
            (300, In::Hb(1, false, 0, E, NONE), "hb B0 elig"),
            (400, In::Hb(1, true, 1, E, NONE), "hb B1 elig"),
        ],
    );
    run(
        cfg(2, 3, 0, false),
        &[
            (0, In::Hb(1, false, 0, E, NONE), "PeerUp { peer: 1 }, hb B0 elig"),
            (200, In::Hb(1, false, 0, E, NONE), "hb B0 elig"),
            (400, In::Hb(1, false, 0, E, NONE), "hb B0 elig"),
            (
                600,
                In::Hb(1, false, 0, E, NONE),
                "garp, take, hb P1 elig, Promoted { epoch: 1, reason: NoPrimary }",
            ),
        ],
    );
}

#[test]
fn higher_epoch_primary_wins_and_loser_steps_down() {
    run(
        cfg(0, 2, 0, false),
        &[
            (0, In::Tick, "hb B0 elig"),
            (300, In::Tick, "garp, take, hb P1 elig, Promoted { epoch: 1, reason: NoPrimary }"),
            (310, In::Hb(1, true, 1, E, NONE), "PeerUp { peer: 1 }, hb P1 elig, garp"),
            (
                320,
                In::Hb(1, true, 2, E, NONE),
                "release, Demoted { epoch: 1, reason: HigherPrimary { peer: 1, epoch: 2 } }, hb B2 elig",
            ),
        ],
    );
}

#[test]
fn equal_epoch_earlier_position_wins() {
    run(
        cfg(1, 2, 0, false),
        &[
            (0, In::Tick, "hb B0 elig"),
            (300, In::Tick, "garp, take, hb P1 elig, Promoted { epoch: 1, reason: NoPrimary }"),
            (
                310,
                In::Hb(0, true, 1, E, NONE),
                "PeerUp { peer: 0 }, release, Demoted { epoch: 1, reason: HigherPrimary { peer: 0, epoch: 1 } }, hb B1 elig",
            ),
        ],
    );
}

#[test]
fn no_preempt_by_default_and_preempt_when_set() {
    let rows = |want: &'static str| {
        [
            (0, In::Hb(1, true, 3, E, NONE), "PeerUp { peer: 0 }, hb B3 elig"),
            (100, In::Hb(1, true, 3, E, NONE), "hb B3 elig"),
            (200, In::Hb(1, true, 3, E, NONE), "hb B3 elig"),
            (300, In::Hb(1, true, 3, E, NONE), want),
        ]
    };
    let fix = |mut r: [(u64, In, &'static str); 4]| {
        r[0].2 = "PeerUp { peer: 1 }, hb B3 elig";
        r
    };
    run(cfg(0, 2, 0, false), &fix(rows("hb B3 elig")));
    run(cfg(0, 2, 0, true), &fix(rows("garp, take, hb P4 elig, Promoted { epoch: 4, reason: Preempt }")));
}

#[test]
fn reachlist_gates_promotion_and_demotes_isolated_primary() {
    run(
        cfg(0, 2, 1, false),
        &[
            (0, In::Tick, "probe0, hb B0"),
            // No primary at 1.5 heartbeats: a fresh round (probe early).
            (150, In::Tick, "probe0, hb B0"),
            (300, In::Tick, "hb B0"),
            // Eligible from 310 ms on: one missed heartbeat (150 ms) passes before it acts.
            (310, In::Probe(0, true), "ReachChanged { reachable: 1, total: 1 }"),
            (400, In::Tick, "hb B0 elig"),
            (459, In::Tick, ""),
            (460, In::Tick, "garp, take, hb P1 elig, Promoted { epoch: 1, reason: NoPrimary }"),
            (500, In::Tick, "probe0"),
            (510, In::Probe(0, false), ""),
            (560, In::Tick, "garp, hb P1 elig"),
            (700, In::Tick, "hb P1 elig"),
            (1000, In::Tick, "probe0, hb P1 elig"),
            (1010, In::Probe(0, false), ""),
            (1200, In::Tick, "hb P1 elig"),
            (1500, In::Tick, "probe0, hb P1 elig"),
            (
                1510,
                In::Probe(0, false),
                "ReachChanged { reachable: 0, total: 1 }, release, Demoted { epoch: 1, reason: LostArbitration }, hb B1",
            ),
        ],
    );
}

#[test]
fn two_atms_backup_reaching_fewer_than_peer_does_not_promote() {
    let mut c = cfg(1, 2, 2, false);
    c.min_reachable = 1;
    // The peer (primary) last reported reach_ok = 1 (see `run`); we reach 0 of 2 → never eligible.
    run(
        c,
        &[
            (0, In::Hb(0, true, 1, E, NONE), "PeerUp { peer: 0 }, probe0, probe1, hb B1"),
            (10, In::Probe(0, false), ""),
            (10, In::Probe(1, false), "ReachChanged { reachable: 0, total: 2 }"),
            (150, In::Tick, "probe0, probe1, hb B1"),
            (160, In::Probe(0, false), ""),
            (160, In::Probe(1, false), ""),
            (400, In::Tick, "hb B1"),
            (500, In::Tick, "PeerDown { peer: 0 }, probe0, probe1, hb B1"),
        ],
    );
}

#[test]
fn three_atms_need_a_majority() {
    run(
        cfg(0, 3, 0, false),
        &[
            (0, In::Tick, "hb B0"),
            (300, In::Tick, "hb B0"),
            // A majority from 350 ms on; one missed heartbeat later it promotes.
            (350, In::Hb(2, false, 0, E, NONE), "PeerUp { peer: 2 }"),
            (400, In::Tick, "hb B0 elig"),
            (500, In::Tick, "garp, take, hb P1 elig, Promoted { epoch: 1, reason: NoPrimary }"),
            (600, In::Tick, "garp, hb P1 elig"),
            (700, In::Tick, "hb P1 elig"),
            (800, In::Tick, "hb P1 elig"),
            (849, In::Tick, ""),
            (
                850,
                In::Tick,
                "PeerDown { peer: 2 }, release, Demoted { epoch: 1, reason: LostArbitration }, hb B1",
            ),
        ],
    );
}

#[test]
fn stalled_primary_steps_down() {
    run(
        cfg(0, 2, 0, false),
        &[
            (0, In::Tick, "hb B0 elig"),
            (300, In::Tick, "garp, take, hb P1 elig, Promoted { epoch: 1, reason: NoPrimary }"),
            (5300, In::Tick, "release, Demoted { epoch: 1, reason: Stalled }, hb B1 elig"),
        ],
    );
}

#[test]
fn graceful_handover_has_no_dead_interval() {
    // Old primary (ATM 0) hands over to ATM 1; once ATM 1 is primary it stops answering for
    // the VIPs but keeps forwarding (drain) for a dead interval, never promoting meanwhile,
    // then exits.
    run(
        cfg(0, 2, 0, false),
        &[
            (0, In::Tick, "hb B0 elig"),
            (300, In::Tick, "garp, take, hb P1 elig, Promoted { epoch: 1, reason: NoPrimary }"),
            (350, In::Hb(1, false, 1, E, NONE), "PeerUp { peer: 1 }, garp"),
            (360, In::Shutdown, "HandoverStarted { to: 1 }, hb P1 elig handover->1"),
            (
                365,
                In::Hb(1, true, 2, E, NONE),
                "drain, Demoted { epoch: 1, reason: HandedOver }, hb B2 elig, Draining { ms: 300 }",
            ),
            (370, In::Shutdown, ""),
            // Draining, it is no candidate: not eligible, and a handover to it is ignored.
            (400, In::Hb(1, true, 3, E | FLAG_HANDOVER, 0), ""),
            (664, In::Tick, "hb B3"),
            (665, In::Tick, "Exiting, exit"),
        ],
    );
    // The successor promotes on the first handover heartbeat.
    run(
        cfg(1, 2, 0, false),
        &[
            (0, In::Hb(0, true, 1, E, NONE), "PeerUp { peer: 0 }, hb B1 elig"),
            (
                50,
                In::Hb(0, true, 1, E | FLAG_HANDOVER, 1),
                "garp, take, hb P2 elig, Promoted { epoch: 2, reason: Handover }",
            ),
        ],
    );
}

#[test]
fn shutdown_without_successor_releases_and_exits() {
    run(
        cfg(0, 2, 0, false),
        &[
            (0, In::Tick, "hb B0 elig"),
            (300, In::Tick, "garp, take, hb P1 elig, Promoted { epoch: 1, reason: NoPrimary }"),
            (310, In::Shutdown, "release, Demoted { epoch: 1, reason: Shutdown }, hb B1 elig, Exiting, exit"),
        ],
    );
}

#[test]
fn admin_requests_are_checked() {
    run(
        cfg(1, 2, 0, false),
        &[
            (
                0,
                In::Admin(AdminRequest::Demote),
                "Refused { what: \"demote\", why: \"not primary\" }, hb B0 elig",
            ),
            (10, In::Hb(0, true, 3, E, NONE), "PeerUp { peer: 0 }"),
            // A primary is up: ask it to hand over rather than take the role by epoch.
            (20, In::Admin(AdminRequest::Promote), "PromoteRequested { primary: 0 }, hb B3 elig wants"),
            (
                25,
                In::Admin(AdminRequest::Promote),
                "Refused { what: \"promote\", why: \"already asked the primary to hand over\" }",
            ),
            (
                30,
                In::Hb(0, true, 3, E | FLAG_HANDOVER, 1),
                "garp, take, hb P4 elig, Promoted { epoch: 4, reason: Handover }",
            ),
            (40, In::Admin(AdminRequest::Promote), "Refused { what: \"promote\", why: \"already primary\" }"),
        ],
    );
}

#[test]
fn an_operator_promote_without_a_primary_takes_the_role_at_once() {
    run(
        cfg(1, 2, 0, false),
        &[
            (0, In::Tick, "hb B0 elig"),
            (
                10,
                In::Admin(AdminRequest::Promote),
                "garp, take, hb P1 elig, Promoted { epoch: 1, reason: Admin }",
            ),
        ],
    );
}

#[test]
fn a_primary_hands_over_to_a_backup_that_asks() {
    run(
        cfg(0, 2, 0, false),
        &[
            (0, In::Tick, "hb B0 elig"),
            (300, In::Tick, "garp, take, hb P1 elig, Promoted { epoch: 1, reason: NoPrimary }"),
            (310, In::Hb(1, false, 1, E, NONE), "PeerUp { peer: 1 }, garp"),
            (
                320,
                In::Hb(1, false, 1, E | FLAG_WANTS_PRIMARY, NONE),
                "HandoverStarted { to: 1 }, hb P1 elig handover->1",
            ),
            // The successor's heartbeat as primary: step down (no epoch fight).
            (
                330,
                In::Hb(1, true, 2, E, NONE),
                "release, Demoted { epoch: 1, reason: HandedOver }, hb B2 elig",
            ),
        ],
    );
}

/// A primary that never hands over (it cannot hear this backup, or runs an older version):
/// the promote is refused after two dead intervals and this ATM stays backup, instead of two
/// primaries for as long as the primary cannot hear it.
#[test]
fn a_promote_the_primary_does_not_answer_is_refused_not_forced() {
    let mut rows = vec![
        (0, In::Tick, "hb B0 elig".to_string()),
        (10, In::Hb(0, true, 3, E, NONE), "PeerUp { peer: 0 }".to_string()),
        (
            20,
            In::Admin(AdminRequest::Promote),
            "PromoteRequested { primary: 0 }, hb B3 elig wants".to_string(),
        ),
    ];
    for t in (100..600).step_by(100) {
        rows.push((t, In::Hb(0, true, 3, E, NONE), String::new()));
        rows.push((t + 20, In::Tick, "hb B3 elig wants".to_string()));
    }
    rows.push((
        620,
        In::Tick,
        "Refused { what: \"promote\", why: \"the primary did not hand over in time (it may not hear this ATM; `cmc demote` on the primary hands over from its side)\" }, hb B3 elig".to_string(),
    ));
    rows.push((700, In::Hb(0, true, 3, E, NONE), String::new()));
    let rows: Vec<(u64, In, &str)> = rows.iter().map(|(t, i, w)| (*t, *i, w.as_str())).collect();
    run(cfg(1, 2, 0, false), &rows);
}

#[test]
fn an_operator_stop_holds_a_backup_out_until_start() {
    run(
        cfg(0, 2, 0, false),
        &[
            (0, In::Admin(AdminRequest::Stop), "Held { held: true }, hb B0"),
            (400, In::Tick, "hb B0"),
            (
                410,
                In::Admin(AdminRequest::Promote),
                "Refused { what: \"promote\", why: \"forwarding is stopped here (start it first)\" }",
            ),
            (420, In::Admin(AdminRequest::Stop), "Refused { what: \"stop\", why: \"already stopped\" }"),
            (
                430,
                In::Admin(AdminRequest::Start),
                "garp, take, Held { held: false }, hb P1 elig, Promoted { epoch: 1, reason: NoPrimary }",
            ),
            (440, In::Admin(AdminRequest::Start), "Refused { what: \"start\", why: \"not stopped\" }"),
        ],
    );
}

#[test]
fn an_operator_stop_on_the_primary_hands_over() {
    run(
        cfg(0, 2, 0, false),
        &[
            (0, In::Tick, "hb B0 elig"),
            (300, In::Tick, "garp, take, hb P1 elig, Promoted { epoch: 1, reason: NoPrimary }"),
            (310, In::Hb(1, false, 0, E, NONE), "PeerUp { peer: 1 }, garp"),
            (
                320,
                In::Admin(AdminRequest::Stop),
                "Held { held: true }, HandoverStarted { to: 1 }, hb P1 handover->1",
            ),
        ],
    );
}

#[test]
fn epochs_never_decrease() {
    run(
        cfg(0, 2, 0, false),
        &[
            (0, In::Hb(1, false, 9, E, NONE), "PeerUp { peer: 1 }, hb B9 elig"),
            (
                300,
                In::Hb(1, false, 2, E, NONE),
                "garp, take, hb P10 elig, Promoted { epoch: 10, reason: NoPrimary }",
            ),
        ],
    );
}

#[test]
fn epoch_at_the_top_saturates() {
    // Regression (cargo fuzz, heartbeat target): a signed heartbeat of epoch u64::MAX made the
    // next promotion overflow.
    run(
        cfg(0, 2, 0, false),
        &[
            (0, In::Hb(1, false, u64::MAX, E, NONE), "PeerUp { peer: 1 }, hb B18446744073709551615 elig"),
            (
                300,
                In::Hb(1, false, u64::MAX, E, NONE),
                "garp, take, hb P18446744073709551615 elig, Promoted { epoch: 18446744073709551615, reason: NoPrimary }",
            ),
        ],
    );
}

#[test]
fn quick_restart_of_a_peer_is_reported_down_and_up() {
    // The backup restarts within the dead interval: the primary never sees it silent, but the
    // new incarnation tells it the old process (and its shadow table) is gone.
    run(
        cfg(0, 2, 0, false),
        &[
            (0, In::Tick, "hb B0 elig"),
            (300, In::Tick, "garp, take, hb P1 elig, Promoted { epoch: 1, reason: NoPrimary }"),
            (350, In::Hb(1, false, 0, E, NONE), "PeerUp { peer: 1 }, garp"),
            (360, In::Hb(1, false, 0, E, NONE), ""),
            (380, In::Reborn(1, 2), "PeerDown { peer: 1 }, PeerUp { peer: 1 }, garp"),
            (390, In::Reborn(1, 2), ""),
        ],
    );
}

#[test]
fn peer_digest_and_holding_come_from_its_heartbeats() {
    let mut e = Election::new(cfg(0, 2, 0, false), 1, Instant::ZERO);
    assert_eq!(e.peer_digest(1), None, "nothing heard yet");
    let mut hb = Heartbeat {
        cluster_id: 7,
        sender: 1,
        interval_ms: 0,
        incarnation: 5,
        seq: 1,
        epoch: 0,
        role: WireRole::Backup,
        flags: E,
        reach_ok: 0,
        reach_total: 0,
        peers_up: 1,
        handover_to: NONE,
        holding: 0b1,
        digest: [2; 16],
    };
    e.handle_heartbeat(Instant::from_millis(10), &hb);
    assert_eq!(e.peer_digest(1), Some(([2; 16], true)), "differs from ours ([1; 16])");
    assert_eq!(e.peer_holding(1), Some(0b1));
    hb.seq = 2;
    hb.digest = e.own_digest();
    hb.holding = 0;
    e.handle_heartbeat(Instant::from_millis(20), &hb);
    assert_eq!(e.peer_digest(1), Some(([1; 16], false)), "synced");
    assert_eq!(e.peer_holding(1), Some(0));
    while e.poll_action().is_some() {}
    e.set_holding(0b10);
    e.handle_timeout(Instant::from_millis(200));
    let sent = std::iter::from_fn(|| e.poll_action()).find_map(|a| match a {
        Action::SendHeartbeat(h) => Some(h.holding),
        _ => None,
    });
    assert_eq!(sent, Some(0b10), "our holding map goes out in our heartbeats");
}

/// A peer's config digest is reported when it starts to differ and when it agrees again
/// (after a sync and reload), once each.
#[test]
fn config_digest_mismatch_and_agreement_are_reported_once() {
    let mut cfg = cfg(0, 2, 0, false);
    cfg.digest = [2; 16];
    let mut e = Election::new(cfg, 1, Instant::ZERO);
    let hb = |seq: u64, digest: [u8; 16]| Heartbeat {
        cluster_id: 7,
        sender: 1,
        interval_ms: 0,
        incarnation: 1,
        seq,
        epoch: 0,
        role: WireRole::Backup,
        flags: E,
        reach_ok: 1,
        reach_total: 1,
        peers_up: 2,
        handover_to: NONE,
        holding: 0,
        digest,
    };
    let mut events = Vec::new();
    for (seq, digest) in [(1, [1; 16]), (2, [1; 16]), (3, [2; 16]), (4, [2; 16])] {
        e.handle_heartbeat(Instant::from_millis(seq * 10), &hb(seq, digest));
        while let Some(a) = e.poll_action() {
            if let Action::Event(ev @ (Event::ConfigMismatch { .. } | Event::ConfigAgrees { .. })) = a {
                events.push((seq, ev));
            }
        }
    }
    assert_eq!(events, vec![(1, Event::ConfigMismatch { peer: 1 }), (3, Event::ConfigAgrees { peer: 1 })]);
}

/// A rolling reload that shortens `timers.heartbeat_ms` reaches the backup first: it then
/// runs at 20 ms while the primary still sends every 100 ms. The primary's heartbeats carry
/// its interval, so the backup waits the longer dead interval and does not promote; a
/// primary that says nothing about its interval (an older one) would be judged at 20 ms.
#[test]
fn a_peer_slower_than_us_after_a_reload_is_judged_on_its_own_interval() {
    let promoted_within = |interval_ms: u16| {
        let mut c = cfg(1, 2, 0, false);
        c.heartbeat = Duration::from_millis(20);
        let mut e = Election::new(c, 1, Instant::ZERO);
        let mut taken = false;
        for seq in 1..=10u64 {
            let hb = Heartbeat {
                cluster_id: 7,
                sender: 0,
                interval_ms,
                incarnation: 1,
                seq,
                epoch: 1,
                role: WireRole::Primary,
                flags: E,
                reach_ok: 0,
                reach_total: 0,
                peers_up: 2,
                handover_to: NONE,
                holding: 0,
                digest: [1; 16],
            };
            let at = seq * 100;
            e.handle_heartbeat(Instant::from_millis(at), &hb);
            for t in (at + 5..at + 100).step_by(5) {
                e.handle_timeout(Instant::from_millis(t));
                taken |= std::iter::from_fn(|| e.poll_action()).any(|a| matches!(a, Action::TakeVips(_)));
            }
        }
        taken
    };
    assert!(!promoted_within(100), "promoted although the primary's heartbeats came on its interval");
    assert!(promoted_within(0), "the test can fail: judged at 20 ms the 100 ms primary looks dead");
}

#[test]
fn a_backup_probes_at_the_first_missed_heartbeat_and_promotes_when_the_dead_interval_ends() {
    let mut c = cfg(1, 2, 1, false);
    c.probe_interval = Duration::from_millis(5000);
    run(
        c,
        &[
            (0, In::Hb(0, true, 1, E, NONE), "PeerUp { peer: 0 }, probe0, hb B1"),
            (5, In::Probe(0, true), "ReachChanged { reachable: 1, total: 1 }"),
            (100, In::Hb(0, true, 1, E, NONE), "hb B1 elig"),
            // The primary's heartbeat due at 200 has not come by 250: probe now, not at 400.
            (250, In::Tick, "probe0, hb B1 elig"),
            (255, In::Probe(0, true), ""),
            // The dead interval (of a new peer: 5 heartbeats) ends at 600: the answer is in,
            // so it promotes at once, the gratuitous ARP before the events queued with it.
            (
                600,
                In::Tick,
                "garp, take, PeerDown { peer: 0 }, hb P2 elig, Promoted { epoch: 2, reason: NoPrimary }",
            ),
        ],
    );
}

#[test]
fn an_answer_from_before_the_first_missed_heartbeat_is_not_fresh() {
    let mut c = cfg(1, 2, 1, false);
    c.probe_interval = Duration::from_millis(5000);
    run(
        c,
        &[
            (0, In::Hb(0, true, 1, E, NONE), "PeerUp { peer: 0 }, probe0, hb B1"),
            (100, In::Hb(0, true, 1, E, NONE), "hb B1"),
            // The round of 0 is answered late, before the primary's silence is noticed.
            (200, In::Probe(0, true), "ReachChanged { reachable: 1, total: 1 }, hb B1 elig"),
            (250, In::Tick, "probe0"),
            // The early round has no answer yet at the end of the dead interval: no promotion.
            (600, In::Tick, "PeerDown { peer: 0 }, hb B1 elig"),
            (620, In::Probe(0, true), "garp, take, hb P2 elig, Promoted { epoch: 2, reason: NoPrimary }"),
        ],
    );
}

#[test]
fn a_healed_partition_gives_the_primary_back_before_a_backup_acts_on_its_reachlist() {
    // The partition cut the primary and the reachlist host from this backup; the heal gives
    // both back, the probe answer first. Promoting on it would be a flap (the backup's higher
    // epoch wins): the backup waits one missed heartbeat and hears the primary.
    run(
        cfg(1, 2, 1, false),
        &[
            (0, In::Hb(0, true, 1, E, NONE), "PeerUp { peer: 0 }, probe0, hb B1"),
            (10, In::Probe(0, false), "ReachChanged { reachable: 0, total: 1 }"),
            (150, In::Tick, "probe0, hb B1"),
            (160, In::Probe(0, false), ""),
            (300, In::Tick, "hb B1"),
            (500, In::Tick, "PeerDown { peer: 0 }, probe0, hb B1"),
            (520, In::Probe(0, true), "ReachChanged { reachable: 1, total: 1 }"),
            (600, In::Tick, "hb B1 elig"),
            (640, In::Hb(0, true, 1, E, NONE), "PeerUp { peer: 0 }"),
            (700, In::Tick, "hb B1 elig"),
            (1000, In::Tick, "probe0, hb B1 elig"),
        ],
    );
}
