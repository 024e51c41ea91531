//! Primary election and heartbeats: one state machine per ATM (sans-IO).
//!
//! # Contract
//!
//! Feed inputs with the time they happened (`handle_*`), then drain [`Election::poll_action`]
//! until it returns `None`, then sleep until [`Election::poll_timeout`] and call
//! [`Election::handle_timeout`]. `now` never goes back. Heartbeats given to
//! [`Election::handle_heartbeat`] are already authenticated and replay-checked (see
//! [`super::atm`]).
//!
//! # Rules (SPEC.md, "Roles and behaviour")
//!
//! * Every ATM starts as **backup** and heartbeats to its peers (backups too: peers learn who
//!   is up, and their reachability score, from it).
//! * When no primary has been heard for the dead interval (`dead_after` heartbeats, stretched
//!   on a lossy link, see [`super::arbitration`]), the **first listed eligible ATM that is up**
//!   promotes with an epoch greater than every epoch it has seen. An ATM of rank `r` among the
//!   eligible ones that are up waits `r` extra dead intervals, so a lower-listed ATM still takes
//!   over if the first one cannot.
//! * **Eligible** means: the reachlist score is known and at least `min_reachable`; with 2 ATMs,
//!   not lower than the peer's last reported score (seed 004: the node reaching fewer hosts
//!   stands down; a report counts for [`ARBITRATION_HOLD`] dead intervals after the peer was
//!   last heard); with 3 or more ATMs, a majority of ATMs (itself included) is heard.
//!   A primary that stops being eligible demotes itself.
//! * Epochs only grow. A primary that hears a primary of higher epoch, or of equal epoch and
//!   earlier config position, steps down at once; the winner heartbeats at once.
//! * `preempt`: a backup listed before the running primary takes over (epoch + 1).
//! * A primary whose own clock jumped by more than the dead interval between two calls (the
//!   process was stopped, or starved) steps down: someone else has probably taken over, and
//!   fighting would flap the VIP.
//! * Graceful stop: a primary names a successor (first eligible peer that is up) in its
//!   heartbeats; the successor promotes at once, and the old primary releases its VIPs when it
//!   hears the successor as primary (or after two dead intervals), then exits. No dead interval,
//!   and the VIP always has an owner.
//! * On promotion: the first gratuitous ARP (NA for IPv6) before any other work, then take
//!   the VIPs, heartbeat, and send the rest of the `gratuitous_count` gratuitous ARPs
//!   `gratuitous_interval` apart, then one every `refresh` while primary. On demotion the VIPs
//!   are released first.
//! * **Probe early**: a backup starts a reachlist round at the primary's first missed
//!   heartbeat (no heartbeat for 1.5 of its intervals), so fresh results are in when the
//!   dead interval ends and promotion does not wait a probe round trip. The decision still
//!   uses only results that arrived after that first miss.
//! * A backup whose eligibility has just come back (a reachlist host answers again, a
//!   majority forms) waits one missed heartbeat of the primary before it promotes: a healed
//!   partition gives back the reachlist and the primary together, and the probe answer comes
//!   first. Promoting on it would move the primary (the backup's epoch is higher).
//! * An operator's promote of a backup while a primary is up asks rather than takes: the
//!   backup sets [`FLAG_WANTS_PRIMARY`] in its heartbeats, the primary hands over to it as
//!   to a graceful stop's successor, and the backup promotes on hearing that. Without a
//!   handover within two dead intervals (at most 4 s) the promote is refused: a primary that
//!   cannot hear this backup would otherwise keep its role beside a forced one (two
//!   primaries for as long as the link is one-way).
//! * Graceful stop (SIGTERM) of a primary: name a successor in the heartbeats; the successor
//!   promotes at once; on hearing it, stop answering for the VIPs but keep forwarding what
//!   still arrives for a drain time (the successor's gratuitous ARP burst, at least one dead
//!   interval, at most 2 s: packets in flight and late caches), then exit. A planned failover
//!   loses no request.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Duration;

use super::arbitration::{LossEstimator, Reach};
use super::heartbeat::{FLAG_ELIGIBLE, FLAG_HANDOVER, FLAG_WANTS_PRIMARY, Heartbeat, NO_HANDOVER, WireRole};
use crate::config::{Config, HeartbeatMode};
use crate::time::Instant;

/// Dead intervals a peer's reported reachability score keeps counting after it was last heard.
///
/// 100 dead intervals (30 s with the defaults): a backup that reaches fewer reachlist hosts
/// than the primary last said it did does not take over at once, because the primary is
/// probably alive and better connected (seed 004); promoting would be the split brain the
/// rule exists to avoid. If the primary really died, the degraded backup takes over after
/// the hold, a slow failover rather than none.
pub const ARBITRATION_HOLD: u32 = 100;

/// What an ATM needs to know from the config.
#[derive(Clone, Debug, PartialEq)]
pub struct ElectionConfig {
    pub cluster_id: u32,
    /// This ATM's position in the config's `atms` list.
    pub me: usize,
    pub atm_count: usize,
    pub heartbeat: Duration,
    pub dead_after: u32,
    pub preempt: bool,
    pub reach_total: usize,
    pub min_reachable: u32,
    pub probe_interval: Duration,
    pub garp_count: u32,
    pub garp_interval: Duration,
    /// `None`: no periodic re-announcement.
    pub garp_refresh: Option<Duration>,
    pub vips: Vec<IpAddr>,
    pub digest: [u8; 16],
    /// Copies of each heartbeat a peer sends (2: broadcast and unicast).
    pub heartbeat_copies: u8,
}

impl ElectionConfig {
    /// From a validated config, for the ATM at position `me`.
    pub fn from_config(cfg: &Config, me: usize) -> Self {
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&cfg.digest()[..16]);
        ElectionConfig {
            cluster_id: cfg.cluster.id,
            me,
            atm_count: cfg.atms.len(),
            heartbeat: Duration::from_millis(cfg.timers.heartbeat_ms),
            dead_after: cfg.timers.dead_after,
            preempt: cfg.timers.preempt,
            reach_total: cfg.arbitration.reachlist.len(),
            min_reachable: cfg.arbitration.min_reachable,
            probe_interval: Duration::from_millis(cfg.arbitration.probe_interval_ms),
            garp_count: cfg.arp.gratuitous_count,
            garp_interval: Duration::from_millis(cfg.arp.gratuitous_interval_ms),
            garp_refresh: (cfg.arp.refresh_s > 0).then(|| Duration::from_secs(cfg.arp.refresh_s)),
            vips: cfg.vips(),
            digest,
            heartbeat_copies: if cfg.cluster.heartbeat_mode == HeartbeatMode::Both { 2 } else { 1 },
        }
    }
}

/// An ATM's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Backup,
    Primary,
}

/// Why an ATM promoted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromoteReason {
    /// No primary heard for the dead interval.
    NoPrimary,
    /// The primary handed over to this ATM.
    Handover,
    /// `preempt`: this ATM is listed before the running primary.
    Preempt,
    /// An operator asked for it.
    Admin,
}

/// Why an ATM demoted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DemoteReason {
    /// Heard a primary that wins (higher epoch, or equal epoch and listed earlier).
    HigherPrimary { peer: usize, epoch: u64 },
    /// Reachlist score or majority lost.
    LostArbitration,
    /// Its own clock jumped past the dead interval (stopped or starved process).
    Stalled,
    /// Handed over on shutdown or on an operator's demote.
    HandedOver,
    /// Stopped with no successor to hand over to.
    Shutdown,
}

/// Something worth a line in the log or the simulator's trace.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Promoted {
        epoch: u64,
        reason: PromoteReason,
    },
    Demoted {
        epoch: u64,
        reason: DemoteReason,
    },
    PeerUp {
        peer: usize,
    },
    PeerDown {
        peer: usize,
    },
    /// The peer runs a config whose digest differs from ours.
    ConfigMismatch {
        peer: usize,
    },
    /// A peer whose config differed runs ours again (after a sync and reload).
    ConfigAgrees {
        peer: usize,
    },
    ReachChanged {
        reachable: usize,
        total: usize,
    },
    HandoverStarted {
        to: usize,
    },
    /// An operator's promote asks the running primary `primary` to hand over.
    PromoteRequested {
        primary: usize,
    },
    /// An operator request that was not carried out.
    Refused {
        what: &'static str,
        why: &'static str,
    },
    /// A datagram was dropped; logged at the first of each reason and at powers of two.
    Rejected {
        reason: super::heartbeat::DecodeError,
        count: u64,
    },
    /// Handed over before a graceful exit: still forwarding what arrives for `ms`.
    Draining {
        ms: u64,
    },
    Exiting,
    /// An operator stopped (`held: true`) or started forwarding on this ATM.
    Held {
        held: bool,
    },
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send to every peer (broadcast and/or unicast, per config).
    SendHeartbeat(Heartbeat),
    TakeVips(Vec<IpAddr>),
    ReleaseVips(Vec<IpAddr>),
    /// A graceful stop's release: stop answering and announcing the VIPs, but keep forwarding
    /// what still arrives (packets in flight, clients that have not yet taken the successor's
    /// gratuitous ARP) until [`Action::Exit`].
    DrainVips(Vec<IpAddr>),
    SendGarp(Vec<IpAddr>),
    /// A live reload removed these VIPs while primary: stop answering for them; the engine
    /// stays active for the VIPs that remain.
    DropVips(Vec<IpAddr>),
    /// Probe reachlist host `target` and report with [`Election::handle_probe`].
    Probe {
        target: usize,
    },
    Event(Event),
    /// The node is done (graceful stop finished).
    Exit,
}

impl Action {
    /// Whether it takes, releases or drops VIPs (their order must be kept).
    pub fn changes_vips(&self) -> bool {
        matches!(
            self,
            Action::TakeVips(_) | Action::ReleaseVips(_) | Action::DrainVips(_) | Action::DropVips(_)
        )
    }
}

/// Operator requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminRequest {
    Promote,
    Demote,
    /// Stop forwarding here: hand over if primary, then stay a backup that is no candidate
    /// (it never promotes and tells its peers so) until [`AdminRequest::Start`].
    Stop,
    /// Undo [`AdminRequest::Stop`]: a candidate again.
    Start,
}

/// What the admin channel shows of a peer (see [`Election::peer_view`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerView {
    /// When its last accepted heartbeat arrived.
    pub last_heard: Option<Instant>,
    pub up: bool,
    pub primary: bool,
    pub epoch: u64,
    pub eligible: bool,
    /// The config digest its heartbeats carry (zero until heard).
    pub digest: [u8; 16],
    pub digest_differs: bool,
}

#[derive(Clone, Debug, Default)]
struct Peer {
    last_heard: Option<Instant>,
    /// The incarnation last heard (0: none yet).
    incarnation: u64,
    up: bool,
    role: Option<WireRole>,
    epoch: u64,
    eligible: bool,
    reach_ok: u8,
    handover_to: u16,
    handover: bool,
    /// It asks to be handed the primary role ([`FLAG_WANTS_PRIMARY`]).
    wants_primary: bool,
    digest: [u8; 16],
    digest_differs: bool,
    /// The `holding` map of its latest heartbeat (service failover).
    holding: u16,
    /// Its heartbeat interval, as its heartbeats say (`None`: an older sender).
    interval: Option<Duration>,
    loss: LossEstimator,
}

#[derive(Clone, Copy, Debug)]
struct Leaving {
    to: usize,
    deadline: Instant,
    exit: bool,
}

/// The election state machine of one ATM. See the module docs for the contract and rules.
#[derive(Debug)]
pub struct Election {
    cfg: ElectionConfig,
    role: Role,
    epoch: u64,
    max_epoch_seen: u64,
    peers: Vec<Peer>,
    started: Instant,
    last_primary_seen: Option<Instant>,
    last_call: Instant,
    seq: u64,
    incarnation: u64,
    next_heartbeat: Instant,
    next_probe: Instant,
    last_probe_round: Option<Instant>,
    /// When the current silence of the primary was noticed (cleared when one is heard).
    suspect_since: Option<Instant>,
    /// The heartbeat interval of the primary last heard (its heartbeats say it).
    primary_interval: Option<Duration>,
    /// Since when this backup has been eligible without a break (None while it is not).
    eligible_since: Option<Instant>,
    reach: Reach,
    garp_left: u32,
    next_garp: Instant,
    next_refresh: Option<Instant>,
    leaving: Option<Leaving>,
    /// A graceful exit handed over and drains until then (never promotes meanwhile).
    draining_until: Option<Instant>,
    /// The last demotion drained rather than released the VIPs.
    drained_vips: bool,
    /// Stopped by an operator ([`AdminRequest::Stop`]): no candidate until started.
    held: bool,
    /// An operator's promote waits for the primary's handover until then.
    promote_request: Option<Instant>,
    exited: bool,
    /// Service groups held for their home ATMs, sent in heartbeats.
    holding: u16,
    actions: VecDeque<Action>,
}

impl Election {
    /// A new ATM, starting as backup at `now`.
    pub fn new(cfg: ElectionConfig, incarnation: u64, now: Instant) -> Self {
        let peer = Peer { loss: LossEstimator::new(cfg.heartbeat_copies), ..Peer::default() };
        let peers = vec![peer; cfg.atm_count];
        let reach = Reach::new(cfg.reach_total);
        Election {
            cfg,
            role: Role::Backup,
            epoch: 0,
            max_epoch_seen: 0,
            peers,
            started: now,
            last_primary_seen: None,
            last_call: now,
            seq: 0,
            incarnation,
            next_heartbeat: now,
            next_probe: now,
            last_probe_round: None,
            suspect_since: None,
            primary_interval: None,
            eligible_since: None,
            reach,
            garp_left: 0,
            next_garp: now,
            next_refresh: None,
            leaving: None,
            promote_request: None,
            draining_until: None,
            drained_vips: false,
            held: false,
            exited: false,
            holding: 0,
            actions: VecDeque::new(),
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn config(&self) -> &ElectionConfig {
        &self.cfg
    }

    /// Peers heard within their dead interval (not counting this ATM).
    pub fn peers_up(&self) -> impl Iterator<Item = usize> + '_ {
        self.peers.iter().enumerate().filter(|(_, p)| p.up).map(|(i, _)| i)
    }

    /// Whether an operator stopped forwarding here ([`AdminRequest::Stop`]).
    pub fn held(&self) -> bool {
        self.held
    }

    /// What is known of ATM `i` (this ATM's own entry is never heard).
    pub fn peer_view(&self, i: usize) -> Option<PeerView> {
        self.peers.get(i).map(|p| PeerView {
            last_heard: p.last_heard,
            up: p.up,
            primary: p.role == Some(WireRole::Primary),
            epoch: p.epoch,
            eligible: p.eligible,
            digest: p.digest,
            digest_differs: p.digest_differs,
        })
    }

    /// The config digest of peer `peer`'s latest heartbeat (first 16 bytes of the SHA-256 of
    /// its running config) and whether it differs from ours; `None` before its first
    /// heartbeat. For `cmc status` (hosts whose config differs) and `cmc sync config`.
    pub fn peer_digest(&self, peer: usize) -> Option<([u8; 16], bool)> {
        let p = self.peers.get(peer).filter(|p| p.incarnation != 0)?;
        Some((p.digest, p.digest_differs))
    }

    /// This ATM's config digest, as its heartbeats carry it.
    pub fn own_digest(&self) -> [u8; 16] {
        self.cfg.digest
    }

    /// The `holding` map of peer `peer`'s latest heartbeat while it is up (service failover).
    pub fn peer_holding(&self, peer: usize) -> Option<u16> {
        self.peers.get(peer).filter(|p| p.up).map(|p| p.holding)
    }

    /// What this ATM puts in the `holding` field of its heartbeats from now on (the service
    /// failover machine's [`crate::failover::Failover::holding`]).
    pub fn set_holding(&mut self, holding: u16) {
        self.holding = holding;
    }

    /// Whether this ATM passes its arbitration rules now (the service failover machine's
    /// standby verdict is the opposite).
    pub fn is_eligible(&self, now: Instant) -> bool {
        self.eligible(now)
    }

    /// Next action to carry out, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When the next heartbeat is due (the driver measures its send jitter against it).
    pub fn heartbeat_due(&self) -> Instant {
        self.next_heartbeat
    }

    /// When [`Election::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.exited {
            return None;
        }
        let dead = self.dead_interval();
        // Without a reachlist no probe is ever due: `next_probe` stays at the start and
        // would make every timeout immediate (a busy loop in a real-time driver).
        let mut t = self.next_heartbeat;
        if self.cfg.reach_total > 0 {
            t = t.min(self.next_probe);
        }
        let mut consider = |x: Instant| t = t.min(x);
        if self.garp_left > 0 {
            consider(self.next_garp);
        }
        if let Some(r) = self.next_refresh {
            consider(r);
        }
        if let Some(l) = self.leaving {
            consider(l.deadline);
        }
        if let Some(d) = self.draining_until {
            consider(d);
        }
        for p in &self.peers {
            if let (true, Some(h)) = (p.up, p.last_heard) {
                consider(h + self.peer_dead_interval(p));
            }
        }
        if self.role == Role::Backup {
            let base = self.last_primary_seen.unwrap_or(self.started).max(self.started);
            let due = base + dead * (1 + self.my_rank() as u32);
            if due > self.last_call {
                consider(due);
            }
            let miss = base + self.missed_after();
            if self.suspect_since.is_none() && self.cfg.reach_total > 0 && miss > self.last_call {
                consider(miss);
            }
            if let Some(settled) = self.eligible_since.map(|e| e + self.missed_after()) {
                if settled > self.last_call {
                    consider(settled);
                }
            }
        }
        Some(t)
    }

    /// Timers: heartbeats, probes, gratuitous ARPs, peer expiry, promotion.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.enter(now);
        self.evaluate(now);
    }

    /// An authenticated heartbeat from peer `hb.sender`.
    pub fn handle_heartbeat(&mut self, now: Instant, hb: &Heartbeat) {
        self.enter(now);
        let from = usize::from(hb.sender);
        if from >= self.peers.len() || from == self.cfg.me || self.exited {
            return;
        }
        let digest_differs = hb.digest != self.cfg.digest;
        let p = &mut self.peers[from];
        if digest_differs && !p.digest_differs {
            self.actions.push_back(Action::Event(Event::ConfigMismatch { peer: from }));
        } else if !digest_differs && p.digest_differs {
            self.actions.push_back(Action::Event(Event::ConfigAgrees { peer: from }));
        }
        p.digest_differs = digest_differs;
        p.digest = hb.digest;
        // A new incarnation of a peer that never went silent long enough to be declared
        // down (a quick restart): the old process is gone and its state (a shadow table,
        // ARP it had heard) with it, so report it down and up again now; a primary then
        // re-announces and streams its whole table to the newcomer.
        let restarted = p.up && p.incarnation != 0 && hb.incarnation != p.incarnation;
        p.incarnation = hb.incarnation;
        if restarted {
            self.actions.push_back(Action::Event(Event::PeerDown { peer: from }));
            self.actions.push_back(Action::Event(Event::PeerUp { peer: from }));
            if self.role == Role::Primary {
                self.garp_left = self.cfg.garp_count;
                self.next_garp = now;
            }
        }
        let p = &mut self.peers[from];
        p.last_heard = Some(now);
        p.role = Some(hb.role);
        p.epoch = hb.epoch;
        p.eligible = hb.has(FLAG_ELIGIBLE);
        p.reach_ok = hb.reach_ok;
        p.handover = hb.has(FLAG_HANDOVER);
        p.handover_to = hb.handover_to;
        p.wants_primary = hb.has(FLAG_WANTS_PRIMARY);
        p.holding = hb.holding;
        p.interval = (hb.interval_ms > 0).then(|| Duration::from_millis(u64::from(hb.interval_ms)));
        p.loss.observe(hb.incarnation, hb.seq);
        if hb.epoch > self.max_epoch_seen && self.role == Role::Backup {
            // Someone was promoted that we did not hear of: a primary is probably up.
            self.last_primary_seen = Some(now);
        }
        self.max_epoch_seen = self.max_epoch_seen.max(hb.epoch);
        self.update_peers(now);
        if hb.role == WireRole::Primary {
            self.on_primary_heard(now, from, hb);
        }
        let asks = self.peers[from].wants_primary && self.peers[from].eligible && self.peers[from].up;
        if asks && self.role == Role::Primary && self.leaving.is_none() && self.draining_until.is_none() {
            self.start_handover(now, from, false);
        }
        self.evaluate(now);
    }

    fn on_primary_heard(&mut self, now: Instant, from: usize, hb: &Heartbeat) {
        match self.role {
            Role::Backup => {
                self.last_primary_seen = Some(now);
                self.suspect_since = None;
                self.primary_interval = self.peers[from].interval;
                let to_me = hb.has(FLAG_HANDOVER) && usize::from(hb.handover_to) == self.cfg.me;
                if to_me && !self.held && self.eligible(now) && self.draining_until.is_none() {
                    self.promote(now, PromoteReason::Handover);
                }
            }
            Role::Primary => {
                let theirs = (hb.epoch, std::cmp::Reverse(from));
                let mine = (self.epoch, std::cmp::Reverse(self.cfg.me));
                if theirs > mine {
                    let handed = self.leaving.is_some_and(|l| l.to == from);
                    let reason = if handed {
                        DemoteReason::HandedOver
                    } else {
                        DemoteReason::HigherPrimary { peer: from, epoch: hb.epoch }
                    };
                    self.demote(now, reason);
                } else {
                    // We win: tell the other primary now rather than at the next tick.
                    self.queue_heartbeat(now);
                }
            }
        }
    }

    /// A further copy of peer `sender`'s newest heartbeat (it sends each one several ways):
    /// only the loss estimate uses it.
    pub fn handle_duplicate(&mut self, sender: usize, incarnation: u64, seq: u64) {
        if let Some(p) = self.peers.get_mut(sender) {
            p.loss.observe_copy(incarnation, seq);
        }
    }

    /// Result of a reachability probe of reachlist host `target`.
    pub fn handle_probe(&mut self, now: Instant, target: usize, ok: bool) {
        self.enter(now);
        let before = (self.reach.known(), self.reach.reachable());
        self.reach.record(target, ok, now);
        let after = (self.reach.known(), self.reach.reachable());
        if before != after && after.0 {
            let ev = Event::ReachChanged { reachable: after.1, total: self.reach.total() };
            self.actions.push_back(Action::Event(ev));
        }
        self.evaluate(now);
    }

    /// A live reload (see [`crate::config::diff`]): the role, epoch, peers and their loss
    /// estimates stay; timers, ARP settings, VIPs and the digest change. The plan sends
    /// anything else (cluster id, this ATM's identity, removed ATMs, the reachlist's length)
    /// to the handover, so `cfg` keeps `cluster_id`, `me` and `reach_total`; `atm_count`
    /// may grow (ATMs appended). A primary takes the new VIPs with a fresh gratuitous-ARP
    /// burst and drops the removed ones; a heartbeat with the new digest goes out at once.
    pub fn reconfigure(&mut self, now: Instant, cfg: ElectionConfig) {
        self.enter(now);
        debug_assert!(cfg.cluster_id == self.cfg.cluster_id && cfg.me == self.cfg.me);
        let added: Vec<IpAddr> = cfg.vips.iter().filter(|v| !self.cfg.vips.contains(v)).copied().collect();
        let removed: Vec<IpAddr> = self.cfg.vips.iter().filter(|v| !cfg.vips.contains(v)).copied().collect();
        if cfg.heartbeat_copies != self.cfg.heartbeat_copies {
            for p in &mut self.peers {
                p.loss = LossEstimator::new(cfg.heartbeat_copies);
            }
        }
        while self.peers.len() < cfg.atm_count {
            self.peers.push(Peer { loss: LossEstimator::new(cfg.heartbeat_copies), ..Peer::default() });
        }
        if cfg.reach_total != self.cfg.reach_total {
            self.reach = Reach::new(cfg.reach_total);
        }
        self.cfg = cfg;
        if self.role == Role::Primary && self.leaving.is_none() {
            if !added.is_empty() {
                self.actions.push_back(Action::TakeVips(added));
                self.garp_left = self.cfg.garp_count;
                self.next_garp = now;
                self.next_refresh = None;
                self.run_garp(now);
            }
            if !removed.is_empty() {
                self.actions.push_back(Action::DropVips(removed));
            }
        }
        self.queue_heartbeat(now);
    }

    /// An operator's promote or demote.
    pub fn handle_admin(&mut self, now: Instant, req: AdminRequest) {
        self.enter(now);
        match (req, self.role) {
            (AdminRequest::Promote, Role::Backup) if self.held => {
                self.refuse("promote", "forwarding is stopped here (start it first)")
            }
            (AdminRequest::Promote, Role::Backup) if self.promote_request.is_some() => {
                self.refuse("promote", "already asked the primary to hand over")
            }
            (AdminRequest::Promote, Role::Backup) if self.eligible(now) => match self.primary_peer_up() {
                Some(primary) => {
                    let wait = (self.dead_interval() * 2).min(Duration::from_secs(4));
                    self.promote_request = Some(now + wait);
                    self.actions.push_back(Action::Event(Event::PromoteRequested { primary }));
                    self.queue_heartbeat(now);
                }
                None => self.promote(now, PromoteReason::Admin),
            },
            (AdminRequest::Promote, Role::Backup) => self.refuse("promote", "not eligible"),
            (AdminRequest::Stop, _) if self.held => self.refuse("stop", "already stopped"),
            (AdminRequest::Stop, role) => {
                self.held = true;
                self.actions.push_back(Action::Event(Event::Held { held: true }));
                if role == Role::Primary {
                    match self.successor(now) {
                        Some(to) => self.start_handover(now, to, false),
                        None => self.demote(now, DemoteReason::HandedOver),
                    }
                }
            }
            (AdminRequest::Start, _) if !self.held => self.refuse("start", "not stopped"),
            (AdminRequest::Start, _) => {
                self.held = false;
                self.actions.push_back(Action::Event(Event::Held { held: false }));
            }
            (AdminRequest::Promote, Role::Primary) => self.refuse("promote", "already primary"),
            (AdminRequest::Demote, Role::Backup) => self.refuse("demote", "not primary"),
            (AdminRequest::Demote, Role::Primary) => match self.successor(now) {
                Some(to) => self.start_handover(now, to, false),
                None => self.refuse("demote", "no eligible backup to hand over to"),
            },
        }
        self.evaluate(now);
    }

    /// Graceful stop (SIGTERM): hand over if primary, drain, then [`Action::Exit`].
    pub fn handle_shutdown(&mut self, now: Instant) {
        self.enter(now);
        if self.exited || self.draining_until.is_some() {
            return;
        }
        match (self.role, self.successor(now)) {
            (Role::Primary, Some(to)) => self.start_handover(now, to, true),
            (Role::Primary, None) => {
                self.demote(now, DemoteReason::Shutdown);
                self.exit();
            }
            (Role::Backup, _) => self.exit(),
        }
        self.evaluate(now);
    }

    fn refuse(&mut self, what: &'static str, why: &'static str) {
        self.actions.push_back(Action::Event(Event::Refused { what, why }));
    }

    fn exit(&mut self) {
        self.exited = true;
        self.actions.push_back(Action::Event(Event::Exiting));
        self.actions.push_back(Action::Exit);
    }

    fn start_handover(&mut self, now: Instant, to: usize, exit: bool) {
        let deadline = now + self.dead_interval() * 2;
        self.leaving = Some(Leaving { to, deadline, exit });
        self.actions.push_back(Action::Event(Event::HandoverStarted { to }));
        self.queue_heartbeat(now);
    }

    /// Common entry: stall detection.
    fn enter(&mut self, now: Instant) {
        let gap = now.saturating_since(self.last_call);
        self.last_call = self.last_call.max(now);
        if self.role == Role::Primary && gap > self.dead_interval() {
            self.demote(now, DemoteReason::Stalled);
        }
    }

    fn dead_interval(&self) -> Duration {
        self.cfg.heartbeat * self.cfg.dead_after
    }

    /// How long a gracefully leaving primary keeps forwarding after handing over: the
    /// successor's gratuitous ARP burst, and at least one dead interval (packets in flight,
    /// clients whose caches take the announcement late), at most 2 s.
    fn drain_time(&self) -> Duration {
        let burst = self.cfg.garp_interval * self.cfg.garp_count;
        burst.max(self.dead_interval()).min(Duration::from_secs(2))
    }

    /// The longer of this ATM's and the peer's heartbeat intervals, times the dead count
    /// (stretched with loss): later, never sooner. A reload that shortens the interval here
    /// while the peer still sends at the old one (or lengthens it there) never makes the
    /// peer look dead.
    fn peer_dead_interval(&self, p: &Peer) -> Duration {
        let interval = p.interval.map_or(self.cfg.heartbeat, |i| i.max(self.cfg.heartbeat));
        interval * p.loss.dead_after(self.cfg.dead_after)
    }

    /// Everything time-driven, in a fixed order.
    fn evaluate(&mut self, now: Instant) {
        if self.exited {
            return;
        }
        self.update_peers(now);
        self.run_probes(now);
        self.check_leaving(now);
        if self.promote_request.is_some_and(|d| now >= d) {
            self.promote_request = None;
            if self.role == Role::Backup {
                self.refuse("promote", "the primary did not hand over in time (it may not hear this ATM; `cmc demote` on the primary hands over from its side)");
            }
        }
        if self.draining_until.is_some_and(|d| now >= d) {
            self.exit();
        }
        if self.exited {
            return;
        }
        match self.role {
            Role::Primary if !self.eligible(now) => self.demote(now, DemoteReason::LostArbitration),
            Role::Primary => {}
            Role::Backup if self.draining_until.is_some() => {}
            Role::Backup => {
                self.track_eligibility(now);
                self.notice_silence(now);
                self.consider_promotion(now);
            }
        }
        if self.role == Role::Primary {
            self.run_garp(now);
        }
        if now >= self.next_heartbeat {
            self.queue_heartbeat(now);
        }
    }

    fn update_peers(&mut self, now: Instant) {
        for i in 0..self.peers.len() {
            let dead = self.peer_dead_interval(&self.peers[i]);
            let p = &mut self.peers[i];
            let up = p.last_heard.is_some_and(|h| now.saturating_since(h) < dead);
            if up != p.up {
                p.up = up;
                if up && self.role == Role::Primary {
                    // A returning peer may have announced the VIPs while it could not hear
                    // us: announce again.
                    self.garp_left = self.cfg.garp_count;
                    self.next_garp = now;
                }
                let ev = if up { Event::PeerUp { peer: i } } else { Event::PeerDown { peer: i } };
                self.actions.push_back(Action::Event(ev));
            }
        }
    }

    fn run_probes(&mut self, now: Instant) {
        if now < self.next_probe || self.cfg.reach_total == 0 {
            return;
        }
        self.next_probe = now + self.cfg.probe_interval;
        self.last_probe_round = Some(now);
        for target in 0..self.cfg.reach_total {
            self.actions.push_back(Action::Probe { target });
        }
    }

    fn check_leaving(&mut self, now: Instant) {
        let Some(l) = self.leaving else { return };
        if self.role == Role::Backup || now >= l.deadline {
            // Demoted by the successor's heartbeat, or demoting now at the deadline.
            let handed_over = self.role == Role::Primary || self.drained_vips;
            if self.role == Role::Primary {
                self.demote(now, DemoteReason::HandedOver);
            }
            self.leaving = None;
            if l.exit && handed_over {
                let drain = self.drain_time();
                self.draining_until = Some(now + drain);
                let ms = drain.as_millis() as u64;
                self.actions.push_back(Action::Event(Event::Draining { ms }));
            } else if l.exit {
                self.exit();
            }
        }
    }

    /// Whether this ATM passes the arbitration rules (module docs).
    fn eligible(&self, now: Instant) -> bool {
        if self.cfg.reach_total > 0 {
            let ok = self.reach.reachable();
            if !self.reach.known() || (ok as u64) < u64::from(self.cfg.min_reachable) {
                return false;
            }
            if self.cfg.atm_count == 2 && ok < self.peer_reported_reach(now) {
                return false;
            }
        }
        if self.cfg.atm_count >= 3 {
            let heard = 1 + self.peers.iter().filter(|p| p.up).count();
            return heard * 2 > self.cfg.atm_count;
        }
        true
    }

    fn peer_reported_reach(&self, now: Instant) -> usize {
        let hold = self.dead_interval() * ARBITRATION_HOLD;
        self.peers
            .iter()
            .filter(|p| p.last_heard.is_some_and(|h| now.saturating_since(h) < hold))
            .map(|p| usize::from(p.reach_ok))
            .max()
            .unwrap_or(0)
    }

    /// Rank of this ATM among the eligible ATMs that are up (0 = first listed).
    fn my_rank(&self) -> usize {
        (0..self.cfg.me).filter(|&i| self.peers[i].up && self.peers[i].eligible).count()
    }

    fn successor(&self, _now: Instant) -> Option<usize> {
        (0..self.peers.len()).find(|&i| i != self.cfg.me && self.peers[i].up && self.peers[i].eligible)
    }

    fn primary_peer_up(&self) -> Option<usize> {
        (0..self.peers.len()).find(|&i| self.peers[i].up && self.peers[i].role == Some(WireRole::Primary))
    }

    fn consider_promotion(&mut self, now: Instant) {
        if self.held || !self.eligible(now) {
            return;
        }
        if let Some(p) = self.primary_peer_up() {
            let stable = now.saturating_since(self.started) >= self.dead_interval();
            if self.cfg.preempt && p > self.cfg.me && stable && !self.peers[p].handover {
                self.promote(now, PromoteReason::Preempt);
            }
            return;
        }
        let base = self.last_primary_seen.unwrap_or(self.started).max(self.started);
        let wait = self.dead_interval() * (1 + self.my_rank() as u32);
        if now.saturating_since(base) < wait {
            return;
        }
        // Eligibility that has just come back waits out one missed heartbeat of the primary:
        // a healed partition gives back the reachlist hosts and the primary at once, and the
        // probe answers come first (one probe round trip against up to one heartbeat).
        if self.eligible_since.is_none_or(|e| now.saturating_since(e) < self.missed_after()) {
            return;
        }
        // The primary went silent: decide on probes sent from now on, not on results from
        // before the silence (the same fault may have cut reachlist hosts too).
        let since = *self.suspect_since.get_or_insert(now);
        if self.fresh_arbitration(now, since) {
            self.promote(now, PromoteReason::NoPrimary);
        }
    }

    /// Notes when this backup became eligible (see [`Election::consider_promotion`]).
    fn track_eligibility(&mut self, now: Instant) {
        if self.eligible(now) {
            self.eligible_since.get_or_insert(now);
        } else {
            self.eligible_since = None;
        }
    }

    /// No primary heard for [`Election::missed_after`]: the current silence starts now, and
    /// a reachlist round sent now has its answers in before the dead interval ends.
    fn notice_silence(&mut self, now: Instant) {
        if self.suspect_since.is_some() || self.held {
            return;
        }
        let base = self.last_primary_seen.unwrap_or(self.started).max(self.started);
        if now.saturating_since(base) < self.missed_after() {
            return;
        }
        self.suspect_since = Some(now);
        // An extra round: the regular ones keep their cadence.
        if self.cfg.reach_total > 0 && self.last_probe_round.is_none_or(|t| t < now) {
            self.last_probe_round = Some(now);
            for target in 0..self.cfg.reach_total {
                self.actions.push_back(Action::Probe { target });
            }
        }
    }

    /// When the primary's next heartbeat counts as missed: 1.5 of its interval (ours when it
    /// did not say) after the last one.
    fn missed_after(&self) -> Duration {
        let interval = self.primary_interval.unwrap_or(self.cfg.heartbeat).max(self.cfg.heartbeat);
        interval * 3 / 2
    }

    /// The reachlist rule on probe results newer than `since` (the primary's last sign of
    /// life); asks for a probe round when there are none yet.
    fn fresh_arbitration(&mut self, now: Instant, since: Instant) -> bool {
        if self.cfg.reach_total == 0 {
            return true;
        }
        match self.reach.fresh(since) {
            Some(ok) => {
                (ok as u64) >= u64::from(self.cfg.min_reachable)
                    && (self.cfg.atm_count != 2 || ok >= self.peer_reported_reach(now))
            }
            None => {
                if self.last_probe_round.is_none_or(|t| t < since) {
                    self.next_probe = now;
                    self.run_probes(now);
                }
                false
            }
        }
    }

    fn promote(&mut self, now: Instant, reason: PromoteReason) {
        // Saturating: a peer (with the secret) that announced epoch u64::MAX must not wrap us
        // back to 0; at the top, the config position breaks ties (found by the fuzzer).
        self.epoch = self.max_epoch_seen.max(self.epoch).saturating_add(1);
        self.max_epoch_seen = self.epoch;
        self.role = Role::Primary;
        self.suspect_since = None;
        self.promote_request = None;
        // The first gratuitous ARP (NA) goes before anything else the driver has queued
        // (events of this evaluation, their log lines): the clients' caches are the outage.
        // The VIPs are taken right after it, before any log line of the promotion. Only a
        // VIP action queued earlier (a stalled primary's release in the same call) stays
        // ahead, so the VIPs' last state is this promotion's.
        self.garp_left = self.cfg.garp_count;
        self.next_garp = now;
        self.next_refresh = None;
        let queued = self.actions.len();
        self.run_garp(now);
        let mut first: Vec<Action> = self.actions.drain(queued..).collect();
        first.push(Action::TakeVips(self.cfg.vips.clone()));
        let at = self.actions.iter().rposition(Action::changes_vips).map_or(0, |i| i + 1);
        for (i, a) in first.into_iter().enumerate() {
            self.actions.insert(at + i, a);
        }
        self.queue_heartbeat(now);
        self.actions.push_back(Action::Event(Event::Promoted { epoch: self.epoch, reason }));
    }

    fn demote(&mut self, now: Instant, reason: DemoteReason) {
        if self.role != Role::Primary {
            return;
        }
        self.role = Role::Backup;
        // A graceful exit keeps forwarding while the successor's announcements take effect.
        if self.leaving.is_some_and(|l| l.exit) {
            self.drained_vips = true;
            self.actions.push_back(Action::DrainVips(self.cfg.vips.clone()));
        } else {
            self.actions.push_back(Action::ReleaseVips(self.cfg.vips.clone()));
        }
        self.actions.push_back(Action::Event(Event::Demoted { epoch: self.epoch, reason }));
        self.garp_left = 0;
        self.next_refresh = None;
        // Wait a full dead interval before considering promotion again.
        self.last_primary_seen = Some(now);
        self.queue_heartbeat(now);
    }

    fn run_garp(&mut self, now: Instant) {
        if self.garp_left > 0 && now >= self.next_garp {
            self.actions.push_back(Action::SendGarp(self.cfg.vips.clone()));
            self.garp_left -= 1;
            self.next_garp = now + self.cfg.garp_interval;
            if self.garp_left == 0 {
                self.next_refresh = self.cfg.garp_refresh.map(|r| now + r);
            }
        }
        if let Some(r) = self.next_refresh.filter(|&r| now >= r) {
            self.actions.push_back(Action::SendGarp(self.cfg.vips.clone()));
            self.next_refresh = self.cfg.garp_refresh.map(|p| r.max(now) + p);
        }
    }

    fn queue_heartbeat(&mut self, now: Instant) {
        self.seq += 1;
        // Drift-free: a heartbeat sent on schedule sets the next deadline from its own
        // deadline, not from the (later) moment it went out. Off schedule (a promotion, a
        // handover) or more than half an interval late: the phase restarts from now (two
        // heartbeats never leave less than half an interval apart).
        let late = now.saturating_since(self.next_heartbeat);
        let on_schedule = now >= self.next_heartbeat && late <= self.cfg.heartbeat / 2;
        let base = if on_schedule { self.next_heartbeat } else { now };
        self.next_heartbeat = base + self.cfg.heartbeat;
        // A node draining before its exit is no candidate: it must not be handed the VIPs.
        let eligible = !self.held && self.eligible(now) && self.draining_until.is_none();
        let mut flags = if eligible { FLAG_ELIGIBLE } else { 0 };
        let mut handover_to = NO_HANDOVER;
        if let Some(l) = self.leaving.filter(|_| self.role == Role::Primary) {
            flags |= FLAG_HANDOVER;
            handover_to = l.to as u16;
        }
        if self.promote_request.is_some() && self.role == Role::Backup && eligible {
            flags |= FLAG_WANTS_PRIMARY;
        }
        let clamp = |n: usize| u8::try_from(n).unwrap_or(u8::MAX);
        let hb = Heartbeat {
            cluster_id: self.cfg.cluster_id,
            sender: self.cfg.me as u16,
            interval_ms: u16::try_from(self.cfg.heartbeat.as_millis()).unwrap_or(u16::MAX),
            incarnation: self.incarnation,
            seq: self.seq,
            // A primary speaks for its own term; a backup reports the newest it has seen.
            epoch: match self.role {
                Role::Primary => self.epoch,
                Role::Backup => self.epoch.max(self.max_epoch_seen),
            },
            role: match self.role {
                Role::Primary => WireRole::Primary,
                Role::Backup => WireRole::Backup,
            },
            flags,
            reach_ok: clamp(self.reach.reachable()),
            reach_total: clamp(self.reach.total()),
            peers_up: clamp(1 + self.peers.iter().filter(|p| p.up).count()),
            handover_to,
            holding: self.holding,
            digest: self.cfg.digest,
        };
        self.actions.push_back(Action::SendHeartbeat(hb));
    }
}
