//! Split-brain avoidance inputs: reachability of the reachlist (seed 004) and an estimate of
//! heartbeat loss that stretches the dead interval on a lossy link.
//!
//! **Reachlist.** Every probe interval the node probes each reachlist host; a host counts as
//! reachable while any of its last [`REACH_WINDOW`] probes succeeded, so one lost probe does
//! not move the score. Until every host has been probed once the score is *unknown* and the
//! node does not promote.
//!
//! A backup about to promote because the primary went silent asks for a fresh round of probes
//! and decides on those results alone ([`Reach::fresh`]): the partition that silenced the
//! primary may also have cut reachlist hosts, and the smoothed score would not show it yet.
//!
//! **Loss-adaptive dead interval.** With `dead_after = 3` and 100 ms heartbeats, a 20 % loss
//! rate on the heartbeat path loses three in a row about once a minute (0.2³ per heartbeat)
//! and a backup would promote for nothing. The backup therefore estimates the loss rate `p`
//! of the primary's heartbeats from sequence gaps (both copies of one heartbeat, broadcast
//! and unicast, count once) and waits for `k` missed heartbeats, the smallest `k >=
//! dead_after` with `p^k <= 1e-9` (at most `4 × dead_after`). On a clean link `k =
//! dead_after`: failover is as fast as configured; on a lossy one it is slower but does not
//! flap. The estimate starts from a 1 % prior (so `k = 5` for the first two seconds or so of
//! a new peer, until its heartbeats have shown the link clean), learns fast over the first 32
//! heartbeats (weight 1/8), then moves slowly (weight 1/64) so that a long clean stretch
//! between two losses does not bring `k` back down to where a burst would flap it.

use crate::time::Instant;

/// Probes remembered per reachlist host.
pub const REACH_WINDOW: u32 = 3;

/// Reachability of the reachlist, from probe results.
#[derive(Clone, Debug, Default)]
pub struct Reach {
    /// Per host: bit i set = probe i back succeeded; `probed` = probes recorded (capped).
    hosts: Vec<(u8, u32)>,
    /// Per host: the latest result and when it arrived.
    latest: Vec<Option<(bool, Instant)>>,
}

impl Reach {
    pub fn new(total: usize) -> Self {
        Reach { hosts: vec![(0, 0); total], latest: vec![None; total] }
    }

    /// Records one probe result, arrived at `now`; out-of-range targets are ignored.
    pub fn record(&mut self, target: usize, ok: bool, now: Instant) {
        if let Some(l) = self.latest.get_mut(target) {
            *l = Some((ok, now));
        }
        if let Some((bits, probed)) = self.hosts.get_mut(target) {
            *bits = (*bits << 1) | u8::from(ok);
            *bits &= (1u8 << REACH_WINDOW) - 1;
            *probed = (*probed + 1).min(REACH_WINDOW);
        }
    }

    /// Number of hosts in the list.
    pub fn total(&self) -> usize {
        self.hosts.len()
    }

    /// Whether every host has been probed at least once.
    pub fn known(&self) -> bool {
        self.hosts.iter().all(|&(_, probed)| probed > 0)
    }

    /// Hosts currently counted as reachable.
    pub fn reachable(&self) -> usize {
        self.hosts.iter().filter(|&&(bits, _)| bits != 0).count()
    }

    /// Hosts whose latest probe, answered at or after `since`, succeeded; `None` until every
    /// host has a result that recent. A backup about to promote decides on this, not on the
    /// smoothed score: the smoothing would hide a loss that came with the primary's silence.
    pub fn fresh(&self, since: Instant) -> Option<usize> {
        let mut ok = 0;
        for l in &self.latest {
            match l {
                Some((good, at)) if *at >= since => ok += usize::from(*good),
                _ => return None,
            }
        }
        Some(ok)
    }
}

/// An exponentially weighted rate in millionths. Over the first 32 samples every sample
/// weighs 1/8 (learn the link fast); after that a sample above the estimate weighs 1/16 and
/// one below it 1/64: the estimate rises faster than it forgets, so a loss that starts late
/// is noticed within a few heartbeats and a clean stretch between two losses does not wipe
/// the memory of them. The price is an estimate biased upwards (about 3x at 4 % loss): a
/// lossy link fails over later, never sooner.
#[derive(Clone, Copy, Debug)]
struct Ewma {
    ppm: u32,
    samples: u32,
}

impl Ewma {
    const LEARN_SHIFT: u32 = 3;
    const RISE_SHIFT: u32 = 4;
    const STEADY_SHIFT: u32 = 6;
    const LEARN_SAMPLES: u32 = 32;

    fn push(&mut self, sample_ppm: u32) {
        let rising = sample_ppm > self.ppm;
        let learning = self.samples < Self::LEARN_SAMPLES;
        let shift = match (learning, rising) {
            (true, _) => Self::LEARN_SHIFT,
            (false, true) => Self::RISE_SHIFT,
            (false, false) => Self::STEADY_SHIFT,
        };
        self.samples = self.samples.saturating_add(1);
        let cur = i64::from(self.ppm);
        let next = cur + ((i64::from(sample_ppm) - cur) >> shift);
        self.ppm = next.clamp(0, 1_000_000) as u32;
    }

    fn rate(self) -> f64 {
        f64::from(self.ppm) / 1e6
    }
}

/// Estimates the loss rate of one sender's heartbeats: from gaps in its sequence numbers,
/// and, when every heartbeat is sent `copies` ways (broadcast and unicast), from the copies
/// that do not arrive. Copies go missing long before a whole heartbeat does (at 20 % loss,
/// one heartbeat in five loses a copy, one in twenty-five loses both), so the dead interval
/// stretches before a lossy link can flap the primary. The estimate is the larger of the
/// two: the gap rate, and the copy rate raised to the number of copies (as if independent).
#[derive(Clone, Copy, Debug)]
pub struct LossEstimator {
    incarnation: u64,
    last_seq: u64,
    /// Copies of `last_seq` received so far.
    last_copies: u8,
    copies: u8,
    seq_loss: Ewma,
    copy_loss: Ewma,
}

impl Default for LossEstimator {
    fn default() -> Self {
        LossEstimator::new(1)
    }
}

impl LossEstimator {
    /// A sender that sends each heartbeat `copies` ways. The prior is 1 % heartbeat loss:
    /// until the link has shown itself clean (about 20 heartbeats), a backup waits a little
    /// longer than `dead_after` (see the module docs).
    pub fn new(copies: u8) -> Self {
        let copies = copies.max(1);
        let prior_copy = if copies == 1 { 10_000 } else { 100_000 };
        LossEstimator {
            incarnation: 0,
            last_seq: 0,
            last_copies: 0,
            copies,
            seq_loss: Ewma { ppm: 10_000, samples: 0 },
            copy_loss: Ewma { ppm: prior_copy, samples: 0 },
        }
    }

    /// Feeds the first copy of an authenticated heartbeat (reordering is ignored).
    pub fn observe(&mut self, incarnation: u64, seq: u64) {
        if incarnation != self.incarnation {
            *self = LossEstimator { incarnation, last_seq: seq, last_copies: 1, ..*self };
            return;
        }
        if seq <= self.last_seq {
            return;
        }
        let lost_copies = u32::from(self.copies.saturating_sub(self.last_copies));
        self.copy_loss.push(lost_copies * 1_000_000 / u32::from(self.copies));
        let missed = (seq - self.last_seq - 1).min(64);
        for _ in 0..missed {
            self.seq_loss.push(1_000_000);
            self.copy_loss.push(1_000_000);
        }
        self.seq_loss.push(0);
        self.last_seq = seq;
        self.last_copies = 1;
    }

    /// Feeds a further copy of the newest heartbeat.
    pub fn observe_copy(&mut self, incarnation: u64, seq: u64) {
        if incarnation == self.incarnation && seq == self.last_seq {
            self.last_copies = (self.last_copies + 1).min(self.copies);
        }
    }

    /// Estimated probability that a heartbeat is lost, in `[0, 1]`.
    pub fn loss(&self) -> f64 {
        self.seq_loss.rate().max(self.copy_loss.rate().powi(i32::from(self.copies)))
    }

    /// Heartbeats to miss before declaring the sender dead (see the module docs).
    pub fn dead_after(&self, configured: u32) -> u32 {
        let p = self.loss();
        let cap = configured.saturating_mul(4);
        if p <= 0.0 {
            return configured;
        }
        if p >= 1.0 {
            return cap;
        }
        let needed = ((1e-9f64).ln() / p.ln()).ceil();
        // `needed` is finite and positive here; the cast saturates anyway.
        (needed as u32).clamp(configured, cap.max(configured))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reach_window_smooths_single_failures() {
        let t = Instant::from_millis;
        let mut r = Reach::new(2);
        assert!(!r.known());
        r.record(0, true, t(1));
        r.record(1, false, t(1));
        assert!(r.known());
        assert_eq!(r.reachable(), 1);
        r.record(0, false, t(2));
        r.record(0, false, t(3));
        assert_eq!(r.reachable(), 1, "one success among the last three still counts");
        assert_eq!(r.fresh(t(2)), None, "host 1 has no result since 2 ms");
        r.record(1, true, t(4));
        assert_eq!(r.fresh(t(2)), Some(1), "latest results only: host 0 failed, host 1 answered");
        r.record(0, false, t(5));
        assert_eq!(r.reachable(), 1);
        r.record(7, true, t(6)); // ignored
        assert_eq!(r.total(), 2);
    }

    #[test]
    fn lost_copies_stretch_the_interval_before_any_heartbeat_is_lost() {
        let mut e = LossEstimator::new(2);
        for seq in 1..=40u64 {
            e.observe(1, seq);
            e.observe_copy(1, seq);
        }
        assert_eq!(e.dead_after(3), 3, "both copies of every heartbeat: clean");
        for seq in 41..=60u64 {
            e.observe(1, seq);
            if seq % 5 != 0 {
                e.observe_copy(1, seq); // one copy in ten lost, no heartbeat lost
            }
        }
        assert!(e.dead_after(3) >= 4, "copy loss seen: {}", e.dead_after(3));
    }

    #[test]
    fn dead_after_stretches_with_loss() {
        let mut e = LossEstimator::default();
        for seq in 1..=200 {
            e.observe(1, seq);
        }
        assert_eq!(e.dead_after(3), 3, "clean link: as configured");
        let mut e = LossEstimator::default();
        for seq in 1..=2000u64 {
            if seq % 5 != 0 {
                e.observe(1, seq); // 20 % lost
            }
        }
        let k = e.dead_after(3);
        assert!((12..=12).contains(&k), "20 % loss needs p^k <= 1e-9 capped at 4x: got {k}");
        let mut e = LossEstimator::default();
        for seq in 1..=2000u64 {
            if seq % 25 != 0 {
                e.observe(1, seq); // 4 % lost
            }
        }
        let k = e.dead_after(3);
        assert!((7..=12).contains(&k), "4 % loss: p^k <= 1e-9 gives 7, more with the upward bias; got {k}");
    }
}
