//! An ATM's control core: the election state machine behind heartbeat authentication.
//!
//! (Named for the ATM, not "node": a node is a real server, `crate::node`; docs/GLOSSARY.md.)
//!
//! [`AtmCore`] takes raw datagrams, checks them (codec, cluster id, HMAC, known sender, replay
//! window), counts every rejection by reason, and hands good heartbeats to the
//! [`Election`]. It signs outgoing heartbeats. Same contract as [`Election`]: feed inputs,
//! drain [`AtmCore::poll_action`], sleep until [`AtmCore::poll_timeout`].

use std::collections::VecDeque;

use super::election::{Action, AdminRequest, Election, ElectionConfig, Event, Role};
use super::heartbeat::{DecodeError, HEARTBEAT_LEN, Heartbeat, ReplayWindow};
use crate::time::Instant;

/// Counters of one ATM core.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AtmStats {
    pub heartbeats_sent: u64,
    pub heartbeats_accepted: u64,
    /// Indexed like [`DecodeError::ALL`].
    pub rejected: [u64; DecodeError::ALL.len()],
}

impl AtmStats {
    /// Rejections for one reason.
    pub fn rejected_for(&self, reason: DecodeError) -> u64 {
        let i = DecodeError::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.rejected[i]
    }
}

/// One ATM: authentication + election. See the module docs.
#[derive(Debug)]
pub struct AtmCore {
    election: Election,
    secret: Vec<u8>,
    windows: Vec<ReplayWindow>,
    stats: AtmStats,
    pending: VecDeque<Action>,
    /// The heartbeat the last datagram carried, if it was accepted (for the driver's
    /// receive-lateness measurement: [`AtmCore::take_accepted`]).
    accepted: Option<Heartbeat>,
}

impl AtmCore {
    /// The core of ATM `cfg.me`, signing with `secret`; `incarnation` must grow across restarts.
    pub fn new(cfg: ElectionConfig, secret: Vec<u8>, incarnation: u64, now: Instant) -> Self {
        let windows = vec![ReplayWindow::default(); cfg.atm_count];
        AtmCore {
            election: Election::new(cfg, incarnation, now),
            secret,
            windows,
            stats: AtmStats::default(),
            pending: VecDeque::new(),
            accepted: None,
        }
    }

    pub fn role(&self) -> Role {
        self.election.role()
    }

    pub fn epoch(&self) -> u64 {
        self.election.epoch()
    }

    pub fn stats(&self) -> &AtmStats {
        &self.stats
    }

    pub fn election(&self) -> &Election {
        &self.election
    }

    /// A datagram arrived on the heartbeat port.
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) {
        match self.accept(bytes) {
            Ok(hb) => {
                self.stats.heartbeats_accepted += 1;
                self.election.handle_heartbeat(now, &hb);
                self.accepted = Some(hb);
            }
            Err(reason) => {
                self.accepted = None;
                let i = DecodeError::ALL.iter().position(|r| *r == reason).unwrap_or(0);
                self.stats.rejected[i] += 1;
                let count = self.stats.rejected[i];
                if !reason.is_benign() && count.is_power_of_two() {
                    self.pending.push_back(Action::Event(Event::Rejected { reason, count }));
                }
                // Time still moves for the election (stall detection, timers).
                self.election.handle_timeout(now);
            }
        }
    }

    /// The heartbeat of the last datagram if it was accepted, once.
    pub fn take_accepted(&mut self) -> Option<Heartbeat> {
        self.accepted.take()
    }

    fn accept(&mut self, bytes: &[u8]) -> Result<Heartbeat, DecodeError> {
        let cfg = self.election.config();
        let hb = Heartbeat::decode(bytes, cfg.cluster_id, &self.secret)?;
        let sender = usize::from(hb.sender);
        if sender == cfg.me {
            return Err(DecodeError::FromSelf);
        }
        let window = self.windows.get_mut(sender).ok_or(DecodeError::UnknownSender)?;
        let checked = window.admit(hb.incarnation, hb.seq).map_err(DecodeError::from);
        if checked == Err(DecodeError::Duplicate) {
            self.election.handle_duplicate(sender, hb.incarnation, hb.seq);
        }
        checked.map(|()| hb)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.election.handle_timeout(now);
    }

    pub fn handle_probe(&mut self, now: Instant, target: usize, ok: bool) {
        self.election.handle_probe(now, target, ok);
    }

    /// A live reload: see [`crate::core::election::Election::reconfigure`]. ATMs appended
    /// get a replay window each; the others keep theirs.
    pub fn reconfigure(&mut self, now: Instant, cfg: ElectionConfig) {
        if self.windows.len() < cfg.atm_count {
            self.windows.resize(cfg.atm_count, ReplayWindow::default());
        }
        self.election.reconfigure(now, cfg);
    }

    pub fn handle_admin(&mut self, now: Instant, req: AdminRequest) {
        self.election.handle_admin(now, req);
    }

    pub fn handle_shutdown(&mut self, now: Instant) {
        self.election.handle_shutdown(now);
    }

    /// The service-failover holding map for the next heartbeats.
    pub fn set_holding(&mut self, holding: u16) {
        self.election.set_holding(holding);
    }

    /// Next action. Heartbeats come out signed: see [`AtmCore::seal`].
    pub fn poll_action(&mut self) -> Option<Action> {
        let a = self.pending.pop_front().or_else(|| self.election.poll_action())?;
        if matches!(a, Action::SendHeartbeat(_)) {
            self.stats.heartbeats_sent += 1;
        }
        Some(a)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.election.poll_timeout()
    }

    /// Signs a heartbeat for the wire.
    pub fn seal(&self, hb: &Heartbeat) -> [u8; HEARTBEAT_LEN] {
        hb.encode(&self.secret)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cfg() -> ElectionConfig {
        ElectionConfig {
            heartbeat: Duration::from_millis(5),
            garp_count: 1,
            vips: vec![],
            ..crate::core::testkit::election(0, 2)
        }
    }

    fn sent(atm: &mut AtmCore) -> usize {
        std::iter::from_fn(|| atm.poll_action()).filter(|a| matches!(a, Action::SendHeartbeat(_))).count()
    }

    /// Late wake-ups (here 0.9 ms each) do not push the schedule back: the deadlines stay
    /// on the 5 ms grid, so 200 heartbeats take 1 s, not 1.18 s.
    #[test]
    fn heartbeat_deadlines_do_not_drift_with_late_wakeups() {
        let start = Instant::from_nanos(0);
        let mut atm = AtmCore::new(cfg(), b"k".to_vec(), 1, start);
        atm.handle_timeout(start);
        assert_eq!(sent(&mut atm), 1);
        let mut beats = 0;
        for _ in 0..200 {
            let due = atm.election().heartbeat_due();
            let late = due + Duration::from_micros(900);
            atm.handle_timeout(late);
            beats += sent(&mut atm);
        }
        assert_eq!(beats, 200);
        assert_eq!(atm.election().heartbeat_due(), start + Duration::from_millis(5 * 201));
    }

    /// A wake-up more than half an interval late restarts the phase from then (no burst of
    /// catch-up heartbeats).
    #[test]
    fn a_stall_restarts_the_phase_without_a_burst() {
        let start = Instant::from_nanos(0);
        let mut atm = AtmCore::new(cfg(), b"k".to_vec(), 1, start);
        atm.handle_timeout(start);
        sent(&mut atm);
        let stalled = start + Duration::from_millis(8);
        atm.handle_timeout(stalled);
        assert_eq!(sent(&mut atm), 1);
        assert_eq!(atm.election().heartbeat_due(), stalled + Duration::from_millis(5));
    }
}
