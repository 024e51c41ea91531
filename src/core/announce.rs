//! Active-active mode: when this ATM announces each VIP /32 over BGP ([`Announcer`]).
//!
//! In active-active mode there is no election for the VIPs: every ATM forwards, and the
//! upstream router spreads flows over the ATMs that announce a VIP (ECMP). So the one
//! decision an ATM makes is *whether it can serve*: an ATM that announces a VIP it cannot
//! serve black-holes its share of the flows, while one that withdraws moves them to the
//! others, where Maglev picks the same real servers. A VIP is announced iff
//!
//! * the data plane is up (the TUN worker runs and the engine forwards),
//! * the reachlist arbitration passes (at least `min_reachable` hosts answer: an ATM cut
//!   off from the network it serves must not attract traffic),
//! * at least one service on the VIP has a real server that is up with a weight above 0,
//! * the ATM is not stopping,
//! * no operator has stopped it (`cmc stop`, [`Input::Hold`]; `cmc start` releases it),
//! * and, on a (re)joining ATM ([`Announcer::join_sync`]), every peer has sent its whole
//!   connection table ([`Input::Synced`], see [`crate::dataplane::fullsync`]) or the bounded
//!   wait for them is over: the flows the router will move here must find their entries,
//!   not be scheduled afresh over a server set that may have changed since they began. The
//!   wait is bounded so that an ATM whose peers are down (or a lone one) still comes up.
//!
//! A graceful stop withdraws every VIP first, then waits `drain` (the router moves new
//! packets to the other ATMs; packets already on their way still find a forwarding data
//! plane), then asks to exit.
//!
//! # Usage contract
//!
//! Like the other core machines: call [`Announcer::handle`] with an input and the `now` it
//! happened at, then drain [`Announcer::poll_action`] until `None`, then sleep until
//! [`Announcer::poll_timeout`] and hand in [`Input::Timeout`]. Each
//! [`Action::Announce`] carries the whole set to announce (not a delta), so the driver can
//! write it to BIRD idempotently; it is emitted only when the set changes (and once at
//! start, so the driver writes an initial config that announces nothing yet).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use crate::config::Service;
use crate::time::Instant;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// The data plane came up or went down.
    DataPlane(bool),
    /// Server `server` of service `service` is up or down (health verdict).
    Server { service: usize, server: usize, up: bool },
    /// Weight of a server changed (operator); 0 takes it out of the count.
    Weight { service: usize, server: usize, weight: u32 },
    /// A reachlist round finished with this many hosts answering.
    Reachable(u32),
    /// An operator stopped (`true`, `cmc stop`) or started (`false`) forwarding here: held,
    /// every VIP is withdrawn as for a graceful stop, but the daemon runs on (and its engine
    /// still serves what the router sends while it moves the flows away).
    Hold(bool),
    /// Every peer's full sync has arrived ([`Announcer::join_sync`]).
    Synced,
    /// Graceful stop: withdraw, drain, exit.
    Shutdown,
    /// `poll_timeout` passed.
    Timeout,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Announce exactly these VIPs (and withdraw every other).
    Announce(BTreeSet<IpAddr>),
    /// The drain after the withdrawal is over: stop.
    Exit,
}

/// Why a VIP is not announced (for logs and status), first failing condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocked {
    DataPlaneDown,
    Arbitration,
    Stopping,
    /// An operator stopped forwarding here ([`Input::Hold`]).
    Held,
    /// Joining: waiting for the peers' connection tables ([`Announcer::join_sync`]).
    Syncing,
    NoHealthyServer,
}

/// Where a join's full sync stands ([`Announcer::join_sync`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinSync {
    /// Waiting for the peers' tables until this time.
    Waiting { since: Instant, until: Instant },
    /// Every peer's table arrived (or no join sync was asked for: `since == until`).
    Synced { since: Instant, at: Instant },
    /// The wait ran out before every peer answered: announced without their tables.
    TimedOut { since: Instant, at: Instant },
}

impl Blocked {
    /// The reason as the admin channel and the logs name it.
    pub fn name(self) -> &'static str {
        match self {
            Blocked::DataPlaneDown => "data_plane_down",
            Blocked::Arbitration => "arbitration_failed",
            Blocked::Stopping => "stopping",
            Blocked::Held => "stopped_by_operator",
            Blocked::Syncing => "syncing",
            Blocked::NoHealthyServer => "no_healthy_server",
        }
    }
}

#[derive(Debug)]
struct Vip {
    address: IpAddr,
    /// Indices of the services on this VIP.
    services: Vec<usize>,
}

/// (service, server) -> (up, weight).
type ServerStates = BTreeMap<(usize, usize), (bool, u32)>;

/// The VIPs of `services` (each with its services) and every server's (up, weight): from
/// `states[i][j]` where given, else up with its configured weight (as at start).
fn layout(services: &[Service], states: &[Vec<(bool, u32)>]) -> (Vec<Vip>, ServerStates) {
    let mut vips: Vec<Vip> = Vec::new();
    let mut servers = BTreeMap::new();
    for (i, s) in services.iter().enumerate() {
        match vips.iter_mut().find(|v| v.address == s.vip) {
            Some(v) => v.services.push(i),
            None => vips.push(Vip { address: s.vip, services: vec![i] }),
        }
        for (j, srv) in s.servers.iter().enumerate() {
            let st = states.get(i).and_then(|r| r.get(j)).copied().unwrap_or((true, srv.weight));
            servers.insert((i, j), st);
        }
    }
    (vips, servers)
}

/// The announce decision of one ATM (module docs).
#[derive(Debug)]
pub struct Announcer {
    vips: Vec<Vip>,
    servers: ServerStates,
    data_plane: bool,
    min_reachable: u32,
    reachable_ok: bool,
    /// Hosts that answered the last reachlist round (`None`: no round yet).
    last_reachable: Option<u32>,
    drain: Duration,
    /// Set by the first [`Input::Shutdown`], never cleared.
    stopping: bool,
    /// [`Input::Hold`]: set and cleared by the operator.
    held: bool,
    exit_at: Option<Instant>,
    sync: JoinSync,
    announced: Option<BTreeSet<IpAddr>>,
    actions: VecDeque<Action>,
}

impl Announcer {
    /// Servers start up (as the health machine's and the engine's do); the data plane starts
    /// down, and arbitration passes until a round says otherwise when `min_reachable` is 0,
    /// fails until the first round passes otherwise (an ATM that has not yet seen the
    /// network must not attract traffic).
    pub fn new(services: &[Service], min_reachable: u32, drain: Duration) -> Self {
        let (vips, servers) = layout(services, &[]);
        let mut a = Announcer {
            vips,
            servers,
            data_plane: false,
            min_reachable,
            reachable_ok: min_reachable == 0,
            last_reachable: None,
            drain,
            stopping: false,
            held: false,
            exit_at: None,
            sync: JoinSync::Synced { since: Instant::ZERO, at: Instant::ZERO },
            announced: None,
            actions: VecDeque::new(),
        };
        a.update();
        a
    }

    pub fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::DataPlane(up) => self.data_plane = up,
            Input::Server { service, server, up } => {
                if let Some(s) = self.servers.get_mut(&(service, server)) {
                    s.0 = up;
                }
            }
            Input::Weight { service, server, weight } => {
                if let Some(s) = self.servers.get_mut(&(service, server)) {
                    s.1 = weight;
                }
            }
            Input::Reachable(n) => {
                self.last_reachable = Some(n);
                self.reachable_ok = n >= self.min_reachable;
            }
            Input::Hold(h) => self.held = h,
            Input::Synced => {
                if let JoinSync::Waiting { since, .. } = self.sync {
                    self.sync = JoinSync::Synced { since, at: now };
                }
            }
            Input::Shutdown if !self.stopping => {
                self.stopping = true;
                self.exit_at = Some(now + self.drain);
            }
            Input::Shutdown | Input::Timeout => {}
        }
        if let JoinSync::Waiting { since, until } = self.sync
            && now >= until
        {
            self.sync = JoinSync::TimedOut { since, at: now };
        }
        self.update();
        if self.exit_at.is_some_and(|t| now >= t) {
            self.exit_at = None;
            self.actions.push_back(Action::Exit);
        }
    }

    /// A live reload: from now on the VIPs and servers of `services`, each server with the
    /// state the engine gives it after the reload (`states[i][j]`: up, and the weight the
    /// operator leaves it), the new arbitration threshold (judged on the last round's count)
    /// and drain. The data plane, hold, stop and join state are kept, and an
    /// [`Action::Announce`] follows only if the announced set changes: a VIP that stays
    /// serviceable is never withdrawn by a reload.
    pub fn reconfigure(
        &mut self,
        services: &[Service],
        states: &[Vec<(bool, u32)>],
        min_reachable: u32,
        drain: Duration,
    ) {
        let (vips, servers) = layout(services, states);
        self.vips = vips;
        self.servers = servers;
        self.min_reachable = min_reachable;
        self.reachable_ok = self.last_reachable.map_or(min_reachable == 0, |n| n >= min_reachable);
        self.drain = drain;
        self.update();
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The end of the drain while stopping, or of the wait for the peers' tables.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let sync = match self.sync {
            JoinSync::Waiting { until, .. } => Some(until),
            _ => None,
        };
        match (self.exit_at, sync) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// This ATM (re)joins: announce nothing until [`Input::Synced`] (every peer sent its
    /// table) or until `wait` has passed (logged by the driver: flows moved here may break if
    /// the server set changed since they began). A zero `wait` does not gate at all.
    pub fn join_sync(&mut self, now: Instant, wait: Duration) {
        self.sync = match wait.is_zero() {
            true => JoinSync::Synced { since: now, at: now },
            false => JoinSync::Waiting { since: now, until: now + wait },
        };
        self.update();
    }

    /// Where the join's full sync stands.
    pub fn join_state(&self) -> JoinSync {
        self.sync
    }

    /// An operator has stopped forwarding here ([`Input::Hold`]).
    pub fn held(&self) -> bool {
        self.held
    }

    /// Is a graceful stop under way.
    pub fn stopping(&self) -> bool {
        self.stopping
    }

    /// The VIPs announced now.
    pub fn announced(&self) -> BTreeSet<IpAddr> {
        self.announced.clone().unwrap_or_default()
    }

    /// Why `vip` is not announced (`None` if it is, or is not one of ours).
    pub fn blocked(&self, vip: IpAddr) -> Option<Blocked> {
        let v = self.vips.iter().find(|v| v.address == vip)?;
        if !self.data_plane {
            Some(Blocked::DataPlaneDown)
        } else if !self.reachable_ok {
            Some(Blocked::Arbitration)
        } else if self.stopping {
            Some(Blocked::Stopping)
        } else if self.held {
            Some(Blocked::Held)
        } else if matches!(self.sync, JoinSync::Waiting { .. }) {
            Some(Blocked::Syncing)
        } else if !v.services.iter().any(|&s| self.serviceable(s)) {
            Some(Blocked::NoHealthyServer)
        } else {
            None
        }
    }

    fn serviceable(&self, service: usize) -> bool {
        self.servers.range((service, 0)..(service + 1, 0)).any(|(_, &(up, w))| up && w > 0)
    }

    fn update(&mut self) {
        let want: BTreeSet<IpAddr> =
            self.vips.iter().map(|v| v.address).filter(|&a| self.blocked(a).is_none()).collect();
        if self.announced.as_ref() != Some(&want) {
            self.announced = Some(want.clone());
            self.actions.push_back(Action::Announce(want));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Forwarding, SchedulerKind, testkit};
    use core::net::Ipv4Addr;

    fn service(name: &str, vip: &str, servers: &[u32]) -> Service {
        let servers = servers
            .iter()
            .enumerate()
            .map(|(i, &w)| testkit::server(&format!("s{i}"), Ipv4Addr::new(10, 0, 1, i as u8 + 1), 80, w));
        Service::builder(name, vip.parse::<IpAddr>().unwrap(), 80)
            .forwarding(Forwarding::Dr)
            .scheduler(SchedulerKind::Mh)
            .servers(servers)
            .build()
    }

    fn set(a: &[&str]) -> BTreeSet<IpAddr> {
        a.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn drain(a: &mut Announcer) -> Vec<Action> {
        std::iter::from_fn(|| a.poll_action()).collect()
    }

    const T0: Instant = Instant::ZERO;
    const V1: &str = "10.0.0.99";
    const V2: &str = "10.0.0.98";

    fn two_vips() -> Announcer {
        let svcs = [service("a", V1, &[1, 1]), service("b", V1, &[1]), service("c", V2, &[1])];
        Announcer::new(&svcs, 0, Duration::from_secs(2))
    }

    #[test]
    fn nothing_is_announced_before_the_data_plane_is_up() {
        let mut a = two_vips();
        assert_eq!(drain(&mut a), vec![Action::Announce(set(&[]))]);
        assert_eq!(a.blocked(V1.parse().unwrap()), Some(Blocked::DataPlaneDown));
        a.handle(T0, Input::DataPlane(true));
        assert_eq!(drain(&mut a), vec![Action::Announce(set(&[V1, V2]))]);
        a.handle(T0, Input::DataPlane(false));
        assert_eq!(drain(&mut a), vec![Action::Announce(set(&[]))]);
    }

    #[test]
    fn a_vip_is_withdrawn_only_when_no_service_on_it_has_a_server() {
        let mut a = two_vips();
        a.handle(T0, Input::DataPlane(true));
        drain(&mut a);
        // Service a loses both servers, but b (same VIP) still has one: no change.
        a.handle(T0, Input::Server { service: 0, server: 0, up: false });
        a.handle(T0, Input::Server { service: 0, server: 1, up: false });
        assert_eq!(drain(&mut a), vec![]);
        // b's only server is drained by weight 0: V1 has nothing left.
        a.handle(T0, Input::Weight { service: 1, server: 0, weight: 0 });
        assert_eq!(drain(&mut a), vec![Action::Announce(set(&[V2]))]);
        assert_eq!(a.blocked(V1.parse().unwrap()), Some(Blocked::NoHealthyServer));
        a.handle(T0, Input::Server { service: 0, server: 1, up: true });
        assert_eq!(drain(&mut a), vec![Action::Announce(set(&[V1, V2]))]);
    }

    #[test]
    fn failed_arbitration_withdraws_and_a_passing_round_announces_again() {
        let svcs = [service("a", V1, &[1])];
        let mut a = Announcer::new(&svcs, 1, Duration::ZERO);
        a.handle(T0, Input::DataPlane(true));
        // Not announced until a reachlist round passes.
        assert_eq!(drain(&mut a), vec![Action::Announce(set(&[]))]);
        a.handle(T0, Input::Reachable(1));
        assert_eq!(drain(&mut a), vec![Action::Announce(set(&[V1]))]);
        a.handle(T0, Input::Reachable(0));
        assert_eq!(drain(&mut a), vec![Action::Announce(set(&[]))]);
        assert_eq!(a.blocked(V1.parse().unwrap()), Some(Blocked::Arbitration));
    }

    #[test]
    fn a_graceful_stop_withdraws_first_then_exits_after_the_drain() {
        let mut a = two_vips();
        a.handle(T0, Input::DataPlane(true));
        drain(&mut a);
        let t = Instant::from_millis(1000);
        a.handle(t, Input::Shutdown);
        assert_eq!(drain(&mut a), vec![Action::Announce(set(&[]))]);
        assert_eq!(a.poll_timeout(), Some(Instant::from_millis(3000)));
        // A second signal does not extend the drain; health changes announce nothing.
        a.handle(Instant::from_millis(2000), Input::Shutdown);
        a.handle(Instant::from_millis(2000), Input::Server { service: 2, server: 0, up: true });
        assert_eq!(drain(&mut a), vec![]);
        a.handle(Instant::from_millis(2999), Input::Timeout);
        assert_eq!(drain(&mut a), vec![]);
        a.handle(Instant::from_millis(3000), Input::Timeout);
        assert_eq!(drain(&mut a), vec![Action::Exit]);
        assert_eq!(a.poll_timeout(), None);
    }

    #[test]
    fn a_joiner_announces_once_synced_and_not_before() {
        let mut a = two_vips();
        a.join_sync(T0, Duration::from_secs(3));
        a.handle(T0, Input::DataPlane(true));
        assert_eq!(drain(&mut a), vec![Action::Announce(set(&[]))]);
        assert_eq!(a.blocked(V1.parse().unwrap()), Some(Blocked::Syncing));
        assert_eq!(Blocked::Syncing.name(), "syncing");
        assert_eq!(a.poll_timeout(), Some(Instant::from_millis(3000)));
        // Health changes while syncing announce nothing.
        a.handle(Instant::from_millis(100), Input::Server { service: 2, server: 0, up: false });
        assert_eq!(drain(&mut a), vec![]);
        a.handle(Instant::from_millis(700), Input::Synced);
        assert_eq!(drain(&mut a), vec![Action::Announce(set(&[V1]))]);
        assert_eq!(a.join_state(), JoinSync::Synced { since: T0, at: Instant::from_millis(700) });
        assert_eq!(a.poll_timeout(), None);
        // A late Synced (a retry's end marker) or the old deadline changes nothing.
        a.handle(Instant::from_millis(3000), Input::Synced);
        a.handle(Instant::from_millis(3000), Input::Timeout);
        assert_eq!(drain(&mut a), vec![]);
        assert_eq!(a.join_state(), JoinSync::Synced { since: T0, at: Instant::from_millis(700) });
    }

    #[test]
    fn a_joiner_whose_peers_never_answer_announces_after_the_bounded_wait() {
        let mut a = two_vips();
        a.join_sync(Instant::from_millis(500), Duration::from_secs(3));
        a.handle(Instant::from_millis(600), Input::DataPlane(true));
        assert_eq!(drain(&mut a), vec![Action::Announce(set(&[]))]);
        a.handle(Instant::from_millis(3499), Input::Timeout);
        assert_eq!(drain(&mut a), vec![]);
        a.handle(Instant::from_millis(3500), Input::Timeout);
        assert_eq!(drain(&mut a), vec![Action::Announce(set(&[V1, V2]))]);
        let at = Instant::from_millis(3500);
        assert_eq!(a.join_state(), JoinSync::TimedOut { since: Instant::from_millis(500), at });
        // Other reasons still come first: a stopping joiner says so, and exits after the drain.
        let mut b = two_vips();
        b.join_sync(T0, Duration::from_secs(3));
        b.handle(T0, Input::DataPlane(true));
        b.handle(Instant::from_millis(1000), Input::Shutdown);
        assert_eq!(b.blocked(V1.parse().unwrap()), Some(Blocked::Stopping));
        assert_eq!(b.poll_timeout(), Some(Instant::from_millis(3000)));
        // A zero wait does not gate.
        let mut c = two_vips();
        c.join_sync(T0, Duration::ZERO);
        c.handle(T0, Input::DataPlane(true));
        assert_eq!(drain(&mut c), vec![Action::Announce(set(&[])), Action::Announce(set(&[V1, V2]))]);
    }

    #[test]
    fn an_operator_hold_withdraws_without_exiting_and_a_start_announces_again() {
        let mut a = two_vips();
        a.handle(T0, Input::DataPlane(true));
        drain(&mut a);
        a.handle(T0, Input::Hold(true));
        assert_eq!(drain(&mut a), vec![Action::Announce(set(&[]))]);
        assert!(a.held());
        assert_eq!(a.blocked(V1.parse().unwrap()), Some(Blocked::Held));
        assert_eq!(a.poll_timeout(), None, "a hold is not a shutdown: no exit is scheduled");
        // Health changes while held announce nothing.
        a.handle(T0, Input::Server { service: 2, server: 0, up: false });
        assert_eq!(drain(&mut a), vec![]);
        a.handle(T0, Input::Hold(false));
        assert_eq!(drain(&mut a), vec![Action::Announce(set(&[V1]))]);
        // A graceful stop while held still exits after the drain.
        a.handle(T0, Input::Hold(true));
        a.handle(T0, Input::Shutdown);
        assert_eq!(drain(&mut a), vec![Action::Announce(set(&[]))]);
        a.handle(Instant::from_millis(2000), Input::Timeout);
        assert_eq!(drain(&mut a), vec![Action::Exit]);
    }

    #[test]
    fn a_reload_keeps_serviceable_vips_announced_and_adds_new_ones_only_when_servable() {
        let mut a = two_vips();
        a.handle(T0, Input::DataPlane(true));
        a.handle(T0, Input::Hold(false));
        drain(&mut a);
        // A server added to `a`, service `c` removed (V2 goes), a new VIP whose only server is
        // still down (its checks have not passed): V1 stays announced, nothing withdrawn
        // but V2, and V3 is not announced yet.
        let new = [service("a", V1, &[1, 1, 1]), service("b", V1, &[1]), service("d", "10.0.0.3", &[1])];
        let states = vec![vec![(true, 1), (true, 1), (false, 1)], vec![(true, 1)], vec![(false, 1)]];
        a.reconfigure(&new, &states, 0, Duration::from_secs(1));
        assert_eq!(drain(&mut a), vec![Action::Announce(set(&[V1]))]);
        assert_eq!(a.blocked("10.0.0.3".parse().unwrap()), Some(Blocked::NoHealthyServer));
        // Its check passes: announced, V1 untouched.
        a.handle(T0, Input::Server { service: 2, server: 0, up: true });
        assert_eq!(drain(&mut a), vec![Action::Announce(set(&[V1, "10.0.0.3"]))]);
        // A reload that changes only weights announces nothing new.
        a.reconfigure(
            &new,
            &[vec![(true, 5); 3], vec![(true, 1)], vec![(true, 1)]],
            0,
            Duration::from_secs(1),
        );
        assert_eq!(drain(&mut a), vec![]);
        // The drain comes from the reload.
        a.handle(T0, Input::Shutdown);
        assert_eq!(a.poll_timeout(), Some(Instant::from_millis(1000)));
    }

    #[test]
    fn a_reload_judges_a_new_threshold_on_the_last_round() {
        let svcs = [service("a", V1, &[1])];
        let mut a = Announcer::new(&svcs, 1, Duration::from_secs(1));
        a.handle(T0, Input::DataPlane(true));
        a.handle(T0, Input::Reachable(1));
        assert_eq!(drain(&mut a).last(), Some(&Action::Announce(set(&[V1]))));
        a.reconfigure(&svcs, &[vec![(true, 1)]], 2, Duration::from_secs(1));
        assert_eq!(drain(&mut a), vec![Action::Announce(set(&[]))], "1 of 2 needed answered");
        assert_eq!(a.blocked(V1.parse().unwrap()), Some(Blocked::Arbitration));
    }
}
