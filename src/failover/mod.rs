//! Service failover (seed 004's clusterd): a sans-IO state machine ([`Failover`]) that decides
//! which of the configured service groups this ATM runs, and when.
//!
//! Driven by the config's `failover` section ([`crate::config::Failover`]), hence the name: a
//! "service" alone is a VIP service (`config::Service`); here services come in *groups* of
//! S/K scripts with mirror sets (docs/GLOSSARY.md).
//!
//! The machine never runs a command, copies a file or reads a clock. The daemon runs its
//! [`Action`]s (commands in their own process group, killed at their timeout; mirror sets
//! with rsync over SSH) and the simulator answers them from its scripted world; both drive
//! exactly this code.
//!
//! # Usage contract
//!
//! Mutate once, drain until empty, then sleep:
//!
//! 1. [`Failover::handle`]`(now, input)`: a peer's state from the election core and its
//!    heartbeats ([`Input::Peer`]), this ATM's arbitration verdict ([`Input::Standby`]), a
//!    finished command or mirror copy, or [`Input::Tick`] (time passed);
//! 2. call [`Failover::poll_action`] until `None`, carrying out every [`Action::Run`] and
//!    [`Action::Mirror`] (and later handing the result back with the same `id`), and logging
//!    every [`Action::Event`];
//! 3. put [`Failover::holding`] in the next heartbeat, sleep until [`Failover::poll_timeout`]
//!    (or until an input arrives), then go to 1.
//!
//! # Rules
//!
//! Each group has a *home* ATM (the one that runs it in normal operation) and a *backup*.
//!
//! * **Home** runs its group unless it is in standby, or its backup is up and reports holding
//!   the group (the `holding` map of its heartbeats). After a start or a standby it waits
//!   `grace` before deciding: by then a backup that took the group over (in the instant
//!   before it heard the home again) reports it, so a restarted or reconnected home does not
//!   start services the backup runs. `grace` must cover a heartbeat there and back: the
//!   daemon uses twice the election's dead interval. A home that does not hear its backup
//!   waits like a backup taking over (below): the silent backup may be an isolated one that
//!   still has to find its standby and stop the group.
//! * **Backup** takes the group over when the home has been down for `takeover_delay_ms`
//!   (counted from `grace` after its start or standby at the earliest) and it is not in
//!   standby itself. The delay gives an isolated home the time to find itself in standby and
//!   stop its services: the two must never run one service at once.
//! * Starting a group while the other ATM of the group is not heard (takeover, or a home
//!   alone) also needs a **fresh arbitration**: [`Action::Arbitrate`] asks the driver for a
//!   round of reachlist probes sent from then on ([`Input::Arbitrated`]), as the election
//!   core does before it promotes: the fault that silenced the other ATM may have cut this
//!   one from the reachlist too, and the standby verdict would not show it yet.
//! * When the other ATM of a group running here goes silent, this ATM asks for a fresh
//!   arbitration at once; if it fails, this ATM is the one cut off: it stops its groups (and
//!   asks again every `retry_ms`). So an isolated ATM stops within a dead interval, a probe
//!   timeout and its K scripts: `takeover_delay_ms` must be longer than that.
//! * **Standby** (lost the reachlist arbitration, seed 004): stop every group, run nothing.
//! * **Hand-back**: when the home is up again, the backup stops the group (K order), mirrors
//!   each of the group's sets to the home, then clears its holding bit; the home, seeing the
//!   bit cleared, starts the group (S order).
//! * A **failed start** is reported and retried after `retry_ms`, up to `start_attempts`;
//!   then it is reported as given up and the next service starts. A failed stop or mirror is
//!   reported; a mirror is retried the same way, then the hand-back goes on without it.
//! * While running a group, the ATM mirrors each set with an `interval_s` to the other ATM of
//!   the group when it is up (the seed's crontab entry).
//!
//! One command or copy at a time per group; an input that changes what a group should do
//! takes effect when the command in flight has finished.
//!
//! A partition in which both ATMs still reach the reachlist (only the link between them is
//! cut) cannot be told from a crash by either side: configure the reachlist so that the
//! isolated side loses it (seed 004's rule).

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::Duration;

use crate::config::{Failover as FailoverConfig, ServiceGroup};
use crate::time::Instant;

/// Identifies one command run or one mirror copy, for its result.
pub type Id = u64;

/// Which script of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    Start,
    Stop,
}

/// What the machine is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// ATM `atm` is up (heard) or down (declared dead by the election core); `holding` is the
    /// holding map of its latest heartbeat (ignored when down).
    Peer { atm: usize, up: bool, holding: u16 },
    /// This ATM lost (`true`) or regained (`false`) its arbitration.
    Standby(bool),
    /// A command finished: exit status 0 (`ok`), else failed, killed at its timeout or not
    /// runnable.
    CommandDone { id: Id, ok: bool },
    /// A mirror copy finished.
    MirrorDone { id: Id, ok: bool },
    /// The answer to [`Action::Arbitrate`]: whether a probe round sent after the request
    /// passes the arbitration rules.
    Arbitrated { ok: bool },
    /// Time passed.
    Tick,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run `argv` (no shell) in its own process group; kill the group after `timeout`.
    Run {
        id: Id,
        group: usize,
        service: usize,
        step: Step,
        argv: Vec<String>,
        timeout: Duration,
    },
    /// Copy mirror set `set` of `group` to ATM `to`.
    Mirror {
        id: Id,
        group: usize,
        set: usize,
        to: usize,
    },
    /// Run a fresh round of reachlist probes and answer with [`Input::Arbitrated`].
    Arbitrate,
    Event(Event),
}

/// Something worth a line in the log or the simulator's trace. `group` and `service` are
/// indices in the config's `failover.groups` and that group's `services`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Standby {
        on: bool,
    },
    /// The backup starts a failed home's group.
    Takeover {
        group: usize,
    },
    /// The backup stops a recovered home's group and mirrors it back.
    HandBack {
        group: usize,
    },
    Started {
        group: usize,
        service: usize,
    },
    StartFailed {
        group: usize,
        service: usize,
        attempt: u32,
        gave_up: bool,
    },
    Stopped {
        group: usize,
        service: usize,
        ok: bool,
    },
    Mirrored {
        group: usize,
        set: usize,
        to: usize,
        ok: bool,
    },
    /// Every service of the group has been started (`failed` of them given up).
    GroupUp {
        group: usize,
        failed: u32,
    },
    GroupDown {
        group: usize,
    },
    /// The hand-back is over: the home may start the group.
    HandedBack {
        group: usize,
    },
    /// A fresh probe round before a start without the other ATM failed the arbitration.
    ArbitrationFailed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Starting { pos: usize, attempt: u32, retry_at: Option<Instant> },
    Running,
    Stopping { pos: usize, handback: bool },
    Handback { set: usize, attempt: u32, retry_at: Option<Instant> },
}

#[derive(Clone, Copy, Debug, Default)]
struct PeerState {
    up: bool,
    holding: u16,
    /// When it went down; `None`: never heard since start.
    down_since: Option<Instant>,
}

#[derive(Debug)]
struct Group {
    index: usize,
    cfg: ServiceGroup,
    home: bool,
    /// The other ATM of the group.
    partner: usize,
    start_seq: Vec<usize>,
    stop_seq: Vec<usize>,
    phase: Phase,
    /// Per service: a start was issued and no stop since (the service may be running).
    started: Vec<bool>,
    failed: u32,
    /// The command or copy in flight.
    busy: Option<Id>,
    /// The mirror set being copied, if the thing in flight is a copy.
    copying: Option<usize>,
    /// Per mirror set: next scheduled copy while running.
    next_mirror: Vec<Option<Instant>>,
}

/// Timing of the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// After start, how long to wait for the partner's first heartbeat before deciding alone.
    pub grace: Duration,
    pub takeover_delay: Duration,
    pub retry: Duration,
    pub start_attempts: u32,
}

impl Timing {
    /// From the config; `grace` is the election's dead interval (a peer not heard by then is
    /// down).
    pub fn from_config(cfg: &FailoverConfig, grace: Duration) -> Self {
        Timing {
            grace,
            takeover_delay: Duration::from_millis(cfg.takeover_delay_ms),
            retry: Duration::from_millis(cfg.retry_ms),
            start_attempts: cfg.start_attempts.max(1),
        }
    }
}

/// The failover state machine of one ATM. See the module docs for the contract and rules.
#[derive(Debug)]
pub struct Failover {
    me: usize,
    timing: Timing,
    standby: bool,
    /// Since when this ATM decides (its start, or the end of its last standby): what it
    /// knew of the other ATMs before is stale.
    awake_since: Instant,
    /// A fresh arbitration asked for and not answered yet: when it was asked.
    asked: Option<Instant>,
    /// When the last fresh arbitration that passed was asked.
    fresh_ok: Option<Instant>,
    /// After a failed one, not before this.
    next_ask: Option<Instant>,
    /// The last fresh arbitration failed: run nothing until one passes or a peer is heard.
    lost_fresh: bool,
    peers: Vec<PeerState>,
    groups: Vec<Group>,
    next_id: Id,
    actions: VecDeque<Action>,
}

impl Failover {
    /// The machine of ATM `me` (index in `atms`) of a cluster of `atm_count` ATMs.
    pub fn new(cfg: &FailoverConfig, me: usize, atm_count: usize, timing: Timing, now: Instant) -> Self {
        let groups = cfg.groups.iter().enumerate().filter(|(_, g)| g.atm == me || g.backup == me);
        let groups = groups
            .map(|(index, g)| Group {
                index,
                home: g.atm == me,
                partner: if g.atm == me { g.backup } else { g.atm },
                start_seq: g.start_sequence(),
                stop_seq: g.stop_sequence(),
                phase: Phase::Idle,
                started: vec![false; g.services.len()],
                failed: 0,
                busy: None,
                copying: None,
                next_mirror: vec![None; g.mirrors.len()],
                cfg: g.clone(),
            })
            .collect();
        let mut m = Failover {
            me,
            timing,
            standby: false,
            awake_since: now,
            asked: None,
            fresh_ok: None,
            next_ask: None,
            lost_fresh: false,
            peers: vec![PeerState::default(); atm_count],
            groups,
            next_id: 1,
            actions: VecDeque::new(),
        };
        m.evaluate(now);
        m
    }

    /// Feeds one input; then drain [`Failover::poll_action`].
    pub fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Peer { atm, up, holding } => self.on_peer(now, atm, up, holding),
            Input::Standby(on) if on != self.standby => {
                self.standby = on;
                if !on {
                    self.awake_since = now;
                }
                self.event(Event::Standby { on });
            }
            Input::Standby(_) | Input::Tick => {}
            Input::CommandDone { id, ok } => self.on_command_done(now, id, ok),
            Input::MirrorDone { id, ok } => self.on_mirror_done(now, id, ok),
            Input::Arbitrated { ok } => {
                let asked = self.asked.take();
                if ok {
                    self.fresh_ok = asked.or(self.fresh_ok);
                    self.lost_fresh = false;
                } else if asked.is_some() {
                    self.lost_fresh = true;
                    self.next_ask = Some(now + self.timing.retry);
                    self.event(Event::ArbitrationFailed);
                }
            }
        }
        self.evaluate(now);
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next instant at which [`Input::Tick`] may change something.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let groups = self.groups.iter().filter(|g| g.busy.is_none()).filter_map(|g| self.deadline(g));
        let ask = self.next_ask.filter(|_| self.lost_fresh && self.asked.is_none());
        groups.chain(ask).min()
    }

    /// Home ATMs (bit = index in `atms`) whose groups this ATM holds as their backup: from
    /// takeover until the hand-back's last copy. Goes in every heartbeat.
    pub fn holding(&self) -> u16 {
        let held = self.groups.iter().filter(|g| !g.home && g.phase != Phase::Idle);
        held.fold(0, |acc, g| acc | bit(g.cfg.atm))
    }

    /// Whether this ATM is in standby.
    pub fn standby(&self) -> bool {
        self.standby
    }

    /// Per local group (index in the config): whether service `service` may be running here
    /// (a start was issued and no stop has finished since).
    pub fn may_run(&self, group: usize, service: usize) -> bool {
        let g = self.groups.iter().find(|g| g.index == group);
        g.is_some_and(|g| g.started.get(service).copied().unwrap_or(false))
    }

    fn on_peer(&mut self, now: Instant, atm: usize, up: bool, holding: u16) {
        if atm == self.me {
            return;
        }
        let Some(p) = self.peers.get_mut(atm) else { return };
        if p.up && !up {
            p.down_since = Some(now);
        }
        let lost = p.up && !up;
        p.up = up;
        p.holding = if up { holding } else { 0 };
        if up {
            self.lost_fresh = false;
        }
        // The other ATM of a group running here went silent: which of the two failed? A
        // fresh probe round now (seed 004); if it fails, this ATM stops its groups.
        let running = self.groups.iter().any(|g| g.partner == atm && g.phase != Phase::Idle);
        if lost && running && self.asked.is_none() {
            self.ask(now);
        }
    }

    fn ask(&mut self, now: Instant) {
        self.asked = Some(now);
        self.next_ask = None;
        self.actions.push_back(Action::Arbitrate);
    }

    fn on_command_done(&mut self, now: Instant, id: Id, ok: bool) {
        let timing = self.timing;
        let Some(g) = self.groups.iter_mut().find(|g| g.busy == Some(id)) else { return };
        g.busy = None;
        let (group, mut events) = (g.index, Vec::new());
        match g.phase {
            Phase::Starting { pos, attempt, .. } => {
                let service = g.start_seq[pos];
                if ok {
                    events.push(Event::Started { group, service });
                    g.phase = Phase::Starting { pos: pos + 1, attempt: 1, retry_at: None };
                } else {
                    let gave_up = attempt >= timing.start_attempts;
                    events.push(Event::StartFailed { group, service, attempt, gave_up });
                    g.phase = if gave_up {
                        g.failed += 1;
                        Phase::Starting { pos: pos + 1, attempt: 1, retry_at: None }
                    } else {
                        Phase::Starting { pos, attempt: attempt + 1, retry_at: Some(now + timing.retry) }
                    };
                }
            }
            Phase::Stopping { pos, handback } => {
                let service = g.stop_seq[pos];
                g.started[service] = false;
                events.push(Event::Stopped { group, service, ok });
                g.phase = Phase::Stopping { pos: pos + 1, handback };
            }
            _ => {}
        }
        events.into_iter().for_each(|e| self.event(e));
    }

    fn on_mirror_done(&mut self, now: Instant, id: Id, ok: bool) {
        let timing = self.timing;
        let Some(g) = self.groups.iter_mut().find(|g| g.busy == Some(id)) else { return };
        g.busy = None;
        let (group, to) = (g.index, g.partner);
        let set = g.copying.take().unwrap_or(0);
        match g.phase {
            Phase::Handback { attempt, .. } => {
                g.phase = if ok || attempt >= timing.start_attempts {
                    Phase::Handback { set: set + 1, attempt: 1, retry_at: None }
                } else {
                    Phase::Handback { set, attempt: attempt + 1, retry_at: Some(now + timing.retry) }
                };
            }
            // A scheduled copy while running (a failed one waits for its next turn too).
            _ => {
                if let Some(slot) = g.next_mirror.get_mut(set) {
                    *slot = Some(now + Duration::from_secs(g.cfg.mirrors[set].interval_s));
                }
            }
        }
        self.event(Event::Mirrored { group, set, to, ok });
    }

    /// Whether this ATM should run group `g` now.
    fn want(&self, g: &Group, now: Instant) -> bool {
        if self.standby || self.lost_fresh {
            return false;
        }
        let p = &self.peers[g.partner];
        match (g.home, p.up) {
            (true, true) => now >= self.awake_since + self.timing.grace && p.holding & bit(g.cfg.atm) == 0,
            (false, true) => false,
            // A home keeps running when its backup fails; it starts alone only after the delay.
            (true, false) if g.phase != Phase::Idle => true,
            (_, false) => now >= self.takeover_at(p),
        }
    }

    /// When group `g` (idle, wanted) could start, for the freshness of the arbitration: the
    /// probe round must have been asked at or after this.
    fn wanted_since(&self, g: &Group) -> Instant {
        let p = &self.peers[g.partner];
        if p.up { self.awake_since + self.timing.grace } else { self.takeover_at(p) }
    }

    /// Starting without hearing the other ATM needs a fresh arbitration (seed 004: the side
    /// that reaches fewer reachlist hosts must not run the services); asks for one if needed.
    fn arbitration_fresh(&mut self, i: usize, now: Instant) -> bool {
        let g = &self.groups[i];
        if self.peers[g.partner].up {
            return true;
        }
        let since = self.wanted_since(g);
        if self.fresh_ok.is_some_and(|t| t >= since) {
            return true;
        }
        if self.asked.is_none() && self.next_ask.is_none_or(|t| t <= now) {
            self.ask(now);
        }
        false
    }

    fn takeover_at(&self, home: &PeerState) -> Instant {
        let awake = self.awake_since + self.timing.grace;
        let since = home.down_since.map_or(awake, |d| d.max(awake));
        since + self.timing.takeover_delay
    }

    /// When `g`, idle of commands, next needs a tick.
    fn deadline(&self, g: &Group) -> Option<Instant> {
        let p = &self.peers[g.partner];
        match g.phase {
            // Waiting for an answer, or for the ask timer of `poll_timeout`.
            Phase::Idle if self.standby || self.lost_fresh || self.asked.is_some() => None,
            Phase::Idle if p.up && (!g.home || p.holding & bit(g.cfg.atm) != 0) => None,
            Phase::Idle => {
                let t = if p.up { self.awake_since + self.timing.grace } else { self.takeover_at(p) };
                // After a failed fresh arbitration, the next one is not asked before `next_ask`.
                Some(self.next_ask.map_or(t, |n| n.max(t)))
            }
            Phase::Starting { retry_at, .. } | Phase::Handback { retry_at, .. } => retry_at,
            Phase::Running if p.up => g.next_mirror.iter().flatten().min().copied(),
            Phase::Running | Phase::Stopping { .. } => None,
        }
    }

    fn evaluate(&mut self, now: Instant) {
        if self.lost_fresh && self.asked.is_none() && self.next_ask.is_some_and(|t| t <= now) {
            self.ask(now);
        }
        for i in 0..self.groups.len() {
            // Each pass either issues a command, waits, or moves the phase forward; a group
            // has fewer phases than the bound.
            for _ in 0..4 * (self.groups[i].cfg.services.len() + self.groups[i].cfg.mirrors.len() + 4) {
                if !self.advance(i, now) {
                    break;
                }
            }
        }
    }

    /// One step of group `i`; `false` when it waits (for a result, a time or an input).
    fn advance(&mut self, i: usize, now: Instant) -> bool {
        if self.groups[i].busy.is_some() {
            return false;
        }
        let want = self.want(&self.groups[i], now);
        let partner_up = self.peers[self.groups[i].partner].up;
        let standby = self.standby;
        let fresh = !(want && self.groups[i].phase == Phase::Idle) || self.arbitration_fresh(i, now);
        let g = &mut self.groups[i];
        let group = g.index;
        match g.phase {
            Phase::Idle if want && !fresh => false,
            Phase::Idle if want => {
                g.phase = Phase::Starting { pos: 0, attempt: 1, retry_at: None };
                g.failed = 0;
                if !g.home {
                    self.event(Event::Takeover { group });
                }
                true
            }
            Phase::Idle => false,
            Phase::Starting { .. } | Phase::Running if !want => {
                let handback = !g.home && partner_up && !standby;
                g.phase = Phase::Stopping { pos: 0, handback };
                if handback {
                    self.event(Event::HandBack { group });
                }
                true
            }
            Phase::Starting { retry_at: Some(t), .. } if t > now => false,
            Phase::Starting { pos, attempt, .. } if pos < g.start_seq.len() => {
                let service = g.start_seq[pos];
                g.phase = Phase::Starting { pos, attempt, retry_at: None };
                g.started[service] = true;
                self.run(i, service, Step::Start);
                false
            }
            Phase::Starting { .. } => {
                g.phase = Phase::Running;
                for (slot, m) in g.next_mirror.iter_mut().zip(&g.cfg.mirrors) {
                    *slot = (m.interval_s > 0).then(|| now + Duration::from_secs(m.interval_s));
                }
                let failed = g.failed;
                self.event(Event::GroupUp { group, failed });
                true
            }
            Phase::Running => {
                let due = g.next_mirror.iter().position(|t| t.is_some_and(|t| t <= now));
                match due {
                    Some(set) if partner_up => {
                        self.mirror(i, set);
                        false
                    }
                    _ => false,
                }
            }
            Phase::Stopping { pos, handback } if pos < g.stop_seq.len() => {
                let service = g.stop_seq[pos];
                if g.started[service] {
                    self.run(i, service, Step::Stop);
                    false
                } else {
                    g.phase = Phase::Stopping { pos: pos + 1, handback };
                    true
                }
            }
            Phase::Stopping { handback, .. } => {
                self.event(Event::GroupDown { group });
                let g = &mut self.groups[i];
                g.phase = if handback {
                    Phase::Handback { set: 0, attempt: 1, retry_at: None }
                } else {
                    Phase::Idle
                };
                true
            }
            // The home failed again during the hand-back: keep the group here.
            Phase::Handback { .. } if want || !partner_up => {
                g.phase = Phase::Idle;
                true
            }
            Phase::Handback { retry_at: Some(t), .. } if t > now => false,
            Phase::Handback { set, .. } if set < g.cfg.mirrors.len() => {
                self.mirror(i, set);
                false
            }
            Phase::Handback { .. } => {
                g.phase = Phase::Idle;
                self.event(Event::HandedBack { group });
                true
            }
        }
    }

    fn run(&mut self, i: usize, service: usize, step: Step) {
        let id = self.take_id();
        let g = &mut self.groups[i];
        g.busy = Some(id);
        let s = &g.cfg.services[service];
        let argv = if step == Step::Start { s.start.clone() } else { s.stop.clone() };
        let timeout = Duration::from_millis(s.timeout_ms);
        self.actions.push_back(Action::Run { id, group: g.index, service, step, argv, timeout });
    }

    fn mirror(&mut self, i: usize, set: usize) {
        let id = self.take_id();
        let g = &mut self.groups[i];
        g.busy = Some(id);
        g.copying = Some(set);
        self.actions.push_back(Action::Mirror { id, group: g.index, set, to: g.partner });
    }

    fn take_id(&mut self) -> Id {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn event(&mut self, e: Event) {
        self.actions.push_back(Action::Event(e));
    }
}

fn bit(atm: usize) -> u16 {
    u16::try_from(atm).ok().and_then(|a| 1u16.checked_shl(u32::from(a))).unwrap_or(0)
}
