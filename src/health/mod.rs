//! Health checking of the real servers: a sans-IO state machine ([`Health`]).
//!
//! The machine decides *when* each check runs and *what* its results mean; it never runs a
//! check, reads a clock or sleeps. One async loop drives it, [`driver::run`], in the daemon
//! (`crate::daemon::health`, with the Linux checkers of `crate::platform::linux::checks`) and
//! in the simulator (checks answered from its scripted world): both run exactly this code.
//!
//! # Usage contract
//!
//! Mutate once, drain until empty, then sleep:
//!
//! 1. [`Health::handle`]`(now, input)` with [`Input::Tick`] (time passed) or
//!    [`Input::Result`] (a check finished);
//! 2. call [`Health::poll_action`] until it returns `None`, carrying out every
//!    [`Action::RunCheck`] (run the probe, with its `timeout`, and later hand its
//!    [`Outcome`] back) and applying every [`Action::Transition`] (scheduler in or out);
//! 3. sleep until [`Health::poll_timeout`] (or until a result arrives), then go to 1.
//!
//! # Probes, verdicts and servers
//!
//! A *probe* is one check of one server of one service (`service × server × check`). Each
//! probe counts consecutive results: `fall` failures in a row turn its verdict down, `rise`
//! passes in a row turn it up again. A server is **up** iff every probe of it is up and it
//! is not held down by flap damping (below); a server without checks is always up.
//!
//! Servers start **up** (as the engine does), so a restarted daemon does not black-hole a
//! service before its first checks, and a dead server leaves after `fall` checks. Each
//! probe runs at once at start, then every `interval_ms` measured from the start of its
//! previous run; a probe still running when it is due again is not started twice (the
//! driver enforces `timeout_ms`, and the config requires `timeout_ms < interval_ms`).
//!
//! # Flap damping (the rule)
//!
//! Each time a server goes down, its *flap penalty* grows by [`Damping::penalty`] (default
//! 1000, capped at [`Damping::max_penalty`], 4000). The penalty decays linearly by
//! [`Damping::decay_per_s`] (default 50 a second: 1000 points in 20 s). When a server's
//! probes are all up again but its penalty is above [`Damping::suppress`] (default 1500),
//! it stays out of the scheduler (*held down*) until the penalty has decayed to
//! [`Damping::reuse`] (default 500); a probe failing again during the hold ends the hold
//! and adds the penalty once more. With the defaults a first failure is never damped; a
//! server that goes down twice within ~10 s is held for up to 20 s more after it recovers,
//! and the hold is at most (4000 − 500) / 50 = 70 s. Going down is never delayed.
//!
//! # Counters
//!
//! Per probe ([`ProbeStats`]): passes, failures, timeouts, and latency (sum, max, last) of
//! every check, whatever its verdict.

pub mod driver;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::Duration;

use crate::config::{Check, Service, diff::Remap};
use crate::time::Instant;

/// Flap damping settings (see the module docs for the rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Damping {
    /// Added to a server's penalty when it goes down.
    pub penalty: u32,
    /// Penalty ceiling (bounds the longest hold).
    pub max_penalty: u32,
    /// Linear decay, points per second.
    pub decay_per_s: u32,
    /// A recovered server whose penalty is above this is held down...
    pub suppress: u32,
    /// ...until its penalty is at or below this.
    pub reuse: u32,
}

impl Default for Damping {
    fn default() -> Self {
        Damping { penalty: 1000, max_penalty: 4000, decay_per_s: 50, suppress: 1500, reuse: 500 }
    }
}

/// Identifies one probe: indices into the config's services, their servers and checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProbeId {
    pub service: usize,
    pub server: usize,
    pub check: usize,
}

/// What one run of a check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass {
        latency: Duration,
    },
    Fail {
        latency: Duration,
        reason: String,
    },
    /// No answer within the check's timeout (a failure).
    Timeout,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        matches!(self, Outcome::Pass { .. })
    }
}

/// Inputs of [`Health::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Time has passed (start due checks, end holds).
    Tick,
    /// A probe's run ended.
    Result { probe: ProbeId, outcome: Outcome },
}

/// Outputs of [`Health::poll_action`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run this probe now, giving up after `timeout`.
    RunCheck { probe: ProbeId, timeout: Duration },
    /// A server enters (`up`) or leaves the scheduler.
    Transition(Transition),
}

/// A server's change of state, with what caused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub service: usize,
    pub server: usize,
    pub up: bool,
    /// The check whose verdict changed (for a hold ending: the last one that recovered).
    pub check: usize,
    /// Why, one word or a short phrase without spaces is best for logs.
    pub reason: String,
}

/// Counters of one probe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeStats {
    pub passes: u64,
    pub failures: u64,
    /// Failures that were timeouts (also counted in `failures`).
    pub timeouts: u64,
    pub latency_sum: Duration,
    pub latency_max: Duration,
    pub latency_last: Duration,
}

#[derive(Clone, Debug)]
struct Probe {
    id: ProbeId,
    interval: Duration,
    timeout: Duration,
    rise: u32,
    fall: u32,
    up: bool,
    /// Consecutive results against the current verdict.
    streak: u32,
    next_due: Instant,
    in_flight: bool,
    stats: ProbeStats,
}

#[derive(Clone, Debug)]
struct ServerState {
    service: usize,
    server: usize,
    /// Indices into `Health::probes`.
    probes: Vec<usize>,
    /// As last reported (the scheduler's view).
    up: bool,
    penalty: u32,
    penalty_at: Instant,
    /// Held down until the penalty decays to `reuse` (set while held).
    held_until: Option<Instant>,
    last_check: usize,
}

/// The health state machine of every service's servers. See the module docs.
#[derive(Debug)]
pub struct Health {
    probes: Vec<Probe>,
    servers: Vec<ServerState>,
    damping: Damping,
    pending: VecDeque<Action>,
}

impl Health {
    /// One probe per (service, server, check), all due at `now`.
    pub fn new(services: &[Service], damping: Damping, now: Instant) -> Health {
        let mut probes = Vec::new();
        let mut servers = Vec::new();
        for (si, svc) in services.iter().enumerate() {
            for ri in 0..svc.servers.len() {
                let mut mine = Vec::new();
                for (ci, c) in svc.checks.iter().enumerate() {
                    mine.push(probes.len());
                    probes.push(Probe::new(ProbeId { service: si, server: ri, check: ci }, c, now));
                }
                servers.push(ServerState {
                    service: si,
                    server: ri,
                    probes: mine,
                    up: true,
                    penalty: 0,
                    penalty_at: now,
                    held_until: None,
                    last_check: 0,
                });
            }
        }
        Health { probes, servers, damping, pending: VecDeque::new() }
    }

    /// A live reload (see [`crate::config::diff`]): `old` are the services this machine was
    /// built or last reloaded with, `remap` maps them to `new`. A probe whose server stays
    /// (same name and address) and whose check is unchanged keeps its verdict, streak,
    /// schedule and counters; so does a server's flap state. A new check of a server that
    /// stays starts up (it takes `fall` failures to pull the server); a new server of a
    /// service that stays starts **down** and enters after `rise` passes (keepalived's
    /// `alpha`); the servers of a new service start up, as at start-up. No transition is
    /// reported for any of these: the engine's reload starts them the same way.
    ///
    /// Checks in flight are forgotten (their results would name old indices): the driver
    /// drops them, and each probe that was running is due again at once.
    pub fn reconfigure(&mut self, now: Instant, old: &[Service], new: &[Service], remap: &Remap) {
        let mut old_probes: Vec<Option<Probe>> =
            std::mem::take(&mut self.probes).into_iter().map(Some).collect();
        let old_servers = std::mem::take(&mut self.servers);
        let mut probes = Vec::new();
        let mut servers = Vec::new();
        for (sj, svc) in new.iter().enumerate() {
            let from_svc = remap.services.iter().position(|&m| m == Some(sj));
            for rk in 0..svc.servers.len() {
                let from = from_svc.and_then(|si| {
                    let ri = remap.servers.get(si)?.iter().position(|&m| m == Some(rk))?;
                    Some((si, ri))
                });
                let was =
                    from.and_then(|(si, ri)| old_servers.iter().find(|s| s.service == si && s.server == ri));
                // A new server of a service that stays waits for its checks.
                let starts_up = from.is_some() || from_svc.is_none();
                let mut mine = Vec::new();
                for (ci, c) in svc.checks.iter().enumerate() {
                    let id = ProbeId { service: sj, server: rk, check: ci };
                    let carried = was.and_then(|w| {
                        let old_checks = &old.get(w.service)?.checks;
                        let pi = w.probes.iter().copied().find(|&pi| {
                            old_probes[pi].as_ref().is_some_and(|p| old_checks.get(p.id.check) == Some(c))
                        })?;
                        old_probes[pi].take()
                    });
                    let p = match carried {
                        Some(mut p) => {
                            p.id = id;
                            if p.in_flight {
                                p.in_flight = false;
                                p.next_due = now;
                            }
                            p
                        }
                        None => {
                            let mut p = Probe::new(id, c, now);
                            p.up = starts_up;
                            p
                        }
                    };
                    mine.push(probes.len());
                    probes.push(p);
                }
                let state = match was {
                    Some(w) => ServerState { service: sj, server: rk, probes: mine, ..w.clone() },
                    None => ServerState {
                        service: sj,
                        server: rk,
                        probes: mine,
                        up: starts_up || svc.checks.is_empty(),
                        penalty: 0,
                        penalty_at: now,
                        held_until: None,
                        last_check: 0,
                    },
                };
                servers.push(state);
            }
        }
        self.probes = probes;
        self.servers = servers;
        // Transitions queued under the old indices would name the wrong servers.
        self.pending.retain(|a| !matches!(a, Action::Transition(_)));
        self.pending.retain(|a| !matches!(a, Action::RunCheck { .. }));
        // A carried server whose probes changed may now be all up (a failing check removed).
        for si in 0..self.servers.len() {
            let all_up = self.servers[si].probes.iter().all(|&p| self.probes[p].up);
            if all_up && !self.servers[si].up && self.servers[si].held_until.is_none() {
                self.reevaluate(now, si, 0, "checks_changed".to_string());
            }
        }
        self.start_due(now);
    }

    /// Feeds one input. Drain [`Health::poll_action`] afterwards.
    pub fn handle(&mut self, now: Instant, input: Input) {
        if let Input::Result { probe, outcome } = input {
            self.on_result(now, probe, &outcome);
        }
        self.end_holds(now);
        self.start_due(now);
    }

    /// The next action to carry out, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.pending.pop_front()
    }

    /// When [`Health::handle`] must next be called with [`Input::Tick`]; `None`: never
    /// (no checks, and nothing held).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let due = self.probes.iter().filter(|p| !p.in_flight).map(|p| p.next_due);
        let holds = self.servers.iter().filter_map(|s| s.held_until);
        due.chain(holds).min()
    }

    /// Whether a server is up as last reported (`None`: no such server).
    pub fn is_up(&self, service: usize, server: usize) -> Option<bool> {
        self.servers.iter().find(|s| s.service == service && s.server == server).map(|s| s.up)
    }

    /// Counters of one probe.
    pub fn stats(&self, probe: ProbeId) -> Option<ProbeStats> {
        self.probes.iter().find(|p| p.id == probe).map(|p| p.stats)
    }

    /// Every probe with its verdict and counters, in config order.
    pub fn probes(&self) -> impl Iterator<Item = (ProbeId, bool, ProbeStats)> + '_ {
        self.probes.iter().map(|p| (p.id, p.up, p.stats))
    }

    /// A server's current flap penalty (after decay to `now`).
    pub fn penalty(&self, service: usize, server: usize, now: Instant) -> Option<u32> {
        let s = self.servers.iter().find(|s| s.service == service && s.server == server)?;
        Some(decayed(&self.damping, s.penalty, s.penalty_at, now))
    }

    fn start_due(&mut self, now: Instant) {
        for p in self.probes.iter_mut().filter(|p| !p.in_flight && p.next_due <= now) {
            p.in_flight = true;
            // Catch up without bursts if the driver was late: the next run is an interval
            // after this one.
            p.next_due = now + p.interval;
            self.pending.push_back(Action::RunCheck { probe: p.id, timeout: p.timeout });
        }
    }

    fn on_result(&mut self, now: Instant, id: ProbeId, outcome: &Outcome) {
        let Some(pi) = self.probes.iter().position(|p| p.id == id) else { return };
        let p = &mut self.probes[pi];
        p.in_flight = false;
        p.count(outcome);
        let flipped = p.record(outcome.passed());
        if !flipped {
            return;
        }
        let Some(si) = self.servers.iter().position(|s| s.probes.contains(&pi)) else { return };
        let reason = match outcome {
            Outcome::Pass { .. } => format!("{}_passes", self.probes[pi].rise),
            Outcome::Fail { reason, .. } => reason.replace(' ', "_"),
            Outcome::Timeout => "timeout".to_string(),
        };
        self.servers[si].last_check = id.check;
        self.reevaluate(now, si, id.check, reason);
    }

    /// After a probe of server `si` flipped: report the server's new state if it changed.
    fn reevaluate(&mut self, now: Instant, si: usize, check: usize, reason: String) {
        let all_up = self.servers[si].probes.iter().all(|&p| self.probes[p].up);
        let d = self.damping;
        let s = &mut self.servers[si];
        let penalty = decayed(&d, s.penalty, s.penalty_at, now);
        if !all_up {
            // A failure during a hold is a flap too: the recovery did not last.
            let was_held = s.held_until.take().is_some();
            if s.up || was_held {
                s.penalty = penalty.saturating_add(d.penalty).min(d.max_penalty);
                s.penalty_at = now;
            }
            if s.up {
                s.up = false;
                self.emit(si, false, check, reason);
            }
        } else if !s.up {
            if penalty > d.suppress {
                let wait_s = f64::from(penalty - d.reuse) / f64::from(d.decay_per_s.max(1));
                s.held_until = Some(now + Duration::from_secs_f64(wait_s));
            } else {
                s.up = true;
                self.emit(si, true, check, reason);
            }
        }
    }

    fn end_holds(&mut self, now: Instant) {
        for si in 0..self.servers.len() {
            let s = &mut self.servers[si];
            if s.held_until.is_some_and(|t| t <= now) {
                s.held_until = None;
                s.up = true;
                let check = s.last_check;
                self.emit(si, true, check, "flap_hold_ended".to_string());
            }
        }
    }

    fn emit(&mut self, si: usize, up: bool, check: usize, reason: String) {
        let s = &self.servers[si];
        let t = Transition { service: s.service, server: s.server, up, check, reason };
        self.pending.push_back(Action::Transition(t));
    }
}

/// `penalty` set at `at`, decayed linearly to `now`.
fn decayed(d: &Damping, penalty: u32, at: Instant, now: Instant) -> u32 {
    let ms = u64::try_from(now.saturating_since(at).as_millis()).unwrap_or(u64::MAX);
    let gone = ms.saturating_mul(u64::from(d.decay_per_s)) / 1000;
    u32::try_from(u64::from(penalty).saturating_sub(gone)).unwrap_or(0)
}

impl Probe {
    fn new(id: ProbeId, c: &Check, now: Instant) -> Probe {
        Probe {
            id,
            interval: Duration::from_millis(c.interval_ms),
            timeout: Duration::from_millis(c.timeout_ms),
            rise: c.rise.max(1),
            fall: c.fall.max(1),
            up: true,
            streak: 0,
            next_due: now,
            in_flight: false,
            stats: ProbeStats::default(),
        }
    }

    fn count(&mut self, outcome: &Outcome) {
        let latency = match outcome {
            Outcome::Pass { latency } => {
                self.stats.passes += 1;
                *latency
            }
            Outcome::Fail { latency, .. } => {
                self.stats.failures += 1;
                *latency
            }
            Outcome::Timeout => {
                self.stats.failures += 1;
                self.stats.timeouts += 1;
                self.timeout
            }
        };
        self.stats.latency_sum += latency;
        self.stats.latency_max = self.stats.latency_max.max(latency);
        self.stats.latency_last = latency;
    }

    /// Counts one result; true if the verdict flipped.
    fn record(&mut self, passed: bool) -> bool {
        if passed == self.up {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak >= needed {
            self.up = passed;
            self.streak = 0;
            return true;
        }
        false
    }
}
