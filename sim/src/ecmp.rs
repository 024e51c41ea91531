//! Active-active mode, deterministically: an ECMP router spreading flows over the ATMs that
//! announce the VIP, each ATM running the real announce decision
//! ([`clusterserver::core::announce::Announcer`]), the real packet engine (`mh`, mid-flow
//! pickup) and the real connection sync between all ATMs.
//!
//! This is a stepped model, not a turmoil run: BGP is reduced to what the router sees (an
//! announcement or withdrawal arrives [`BGP_DELAY_MS`] after the ATM decided; a crashed ATM's
//! session closes after [`BGP_DELAY_MS`] because its BIRD dies with it; a frozen ATM is only
//! noticed after the hold time), and the router is Linux's hash-threshold multipath: the
//! 5-tuple hash space is split into equal ranges, one per next hop in address order, so a
//! change of the set re-slices it. Everything runs on the driver's own millisecond clock, with
//! flows from a seeded generator: a run is a pure function of (scenario, seed), and its trace
//! is kept as a snapshot.
//!
//! Every ATM, at the start and on a (re)join, first asks the others for their tables over the
//! sync channel ([`clusterserver::dataplane::fullsync`], the daemon's code) and announces only
//! once every peer's end marker arrived, or after [`JOIN_SYNC_WAIT_MS`] (peers that are down
//! never answer). Sync datagrams arrive in the tick they are sent.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use clusterserver::config::{self, Forwarding, SchedulerKind, Service};
use clusterserver::core::announce::{Action, Announcer, Input, JoinSync};
use clusterserver::dataplane::engine::{Engine, EngineConfig, Verdict};
use clusterserver::dataplane::fullsync::FullSync;
use clusterserver::dataplane::sched::stable_hash;
use clusterserver::dataplane::sync::{MAX_DATAGRAM, Received, SyncReceiver, SyncSender};
use clusterserver::dataplane::wire::build;
use clusterserver::dataplane::wire::tcp::flags::{ACK, SYN};
use clusterserver::testkit;
use clusterserver::time::Instant;

use crate::rng::SplitMix64;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 91, 9, 99);
/// The IPv6 VIP and its servers' prefix (`active-active` scenarios with `topology.ip: ipv6`);
/// the ATMs' own addresses (sync, BGP sessions) stay IPv4.
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x91, 0, 0, 0, 0, 0, 0x99);
/// From an ATM's decision (or its BIRD's death) to the router's table.
pub const BGP_DELAY_MS: u64 = 5;
/// The routers' BGP hold time: how long a frozen ATM keeps its flows.
pub const HOLD_MS: u64 = 3000;
/// Graceful stop: withdrawal to exit.
pub const DRAIN_MS: u64 = 2000;
const TICK_MS: u64 = 10;
/// A joiner's bounded wait for its peers' tables (the daemon's default `bgp.join_sync_ms`).
pub const JOIN_SYNC_WAIT_MS: u64 = 3000;
/// A flow not forwarded for this long at the end of a run counts as broken.
pub const UNSERVED_MS: u64 = 2000;
const SECRET: &[u8] = b"sim active-active";

/// One fault of an active-active run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// SIGTERM: withdraw, drain, exit.
    Drain(usize),
    /// SIGKILL: the engine and BIRD are gone at once.
    Crash(usize),
    /// SIGSTOP: nothing forwarded, the session stays until the hold time.
    Freeze(usize),
    /// A (re)start with an empty table.
    Join(usize),
    /// The drained fourth server gets weight 1 on every ATM (Maglev remaps ~1/4 of flows).
    AddServer,
    /// ATM `to` loses the next `count` sync record datagrams that reach it while it waits
    /// for its full sync on join (from the tick after its request went out): the peer's
    /// end marker then counts records that never arrived.
    LoseSync { to: usize, count: u32 },
}

struct Atm {
    engine: Engine,
    announcer: Announcer,
    sender: SyncSender,
    /// One per sending ATM (each has its own session and sequence), as in the daemon.
    receivers: BTreeMap<usize, SyncReceiver>,
    /// Full sync on join: asks the peers, answers their requests.
    full: FullSync,
    /// When this incarnation started (its full-sync requests went out in that tick).
    born_ms: u64,
    /// Forwards (not crashed, not frozen, not exited).
    running: bool,
    frozen: bool,
}

/// The outcome of a run: flows broken (server changed, or not forwarded for the last
/// [`UNSERVED_MS`]) and the longest pause of any flow.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub broken: usize,
    pub longest_pause_ms: u64,
    /// Sync datagrams lost by `Step::LoseSync`.
    pub sync_lost: u64,
    /// Joins that announced after the bounded wait, without every peer's table.
    pub joins_without_sync: u64,
    pub trace: String,
}

/// `servers` real servers; the last one drained (weight 0) until [`Step::AddServer`].
fn service(servers: u8) -> Service {
    let servers = (0..servers).map(|i| {
        testkit::server(
            &format!("srv{}", i + 1),
            Ipv4Addr::new(10, 91, 0, 51 + i),
            80,
            u32::from(i + 1 < servers),
        )
    });
    Service::builder("web", VIP, 80)
        .forwarding(Forwarding::Dr)
        .scheduler(SchedulerKind::Mh)
        .servers(servers)
        .build()
}

/// The daemon's consistency measures, each switchable to show what it prevents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measures {
    /// Connection sync between all ATMs.
    pub sync: bool,
    /// Mid-flow pickup by consistent hash.
    pub pickup: bool,
    /// A (re)joining ATM announces only once it has its peers' tables (or after the wait).
    pub join_sync: bool,
}

impl Measures {
    /// As the daemon runs in active-active mode.
    pub const ON: Measures = Measures { sync: true, pickup: true, join_sync: true };
}

fn atm(i: usize, atms: usize, svc: &Service, now: Instant, incarnation: u64, m: Measures) -> Atm {
    let born_ms = now.as_millis();
    let mut engine = Engine::new(&EngineConfig {
        services: vec![svc.settings()],
        // The model's flows number in the hundreds: a table of 65,536 holds them without
        // allocating the default million slots per ATM and (re)start of every seed.
        table: config::Table { max_connections: 65_536, ..config::Table::default() },
        local_addr: Ipv4Addr::new(10, 91, 0, 1 + i as u8),
        local_addr6: core::net::Ipv6Addr::UNSPECIFIED,
        path_mtu: 1500,
        seed: 91,
    });
    engine.set_active(true);
    engine.set_sync(m.sync);
    engine.set_mid_flow_pickup(m.pickup);
    let mut announcer = Announcer::new(std::slice::from_ref(svc), 0, Duration::from_millis(DRAIN_MS));
    let mut full = FullSync::new();
    if m.join_sync && m.sync {
        announcer.join_sync(now, Duration::from_millis(JOIN_SYNC_WAIT_MS));
        full.join(now, (0..atms).filter(|&j| j != i));
    }
    announcer.handle(now, Input::DataPlane(true));
    Atm {
        engine,
        announcer,
        sender: SyncSender::new(SECRET, 91, incarnation, 1_000_000),
        receivers: BTreeMap::new(),
        full,
        born_ms,
        running: true,
        frozen: false,
    }
}

/// The service of an active-active scenario: `servers` IPv6 (or IPv4) servers, all in.
fn scenario_service(servers: u8, v6: bool) -> Service {
    let mut svc = service(servers);
    for (i, srv) in svc.servers.iter_mut().enumerate() {
        srv.weight = 1;
        if v6 {
            srv.address = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x91, 0, 0, 0, 0, 0, 0x51 + i as u16));
        }
    }
    if v6 {
        svc.vip = IpAddr::V6(VIP6);
    }
    svc
}

/// The router: next hops in address order, hash-threshold selection.
fn route(next_hops: &BTreeSet<usize>, flow: (IpAddr, u16)) -> Option<usize> {
    if next_hops.is_empty() {
        return None;
    }
    let mut key = match flow.0 {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    key.extend_from_slice(&flow.1.to_be_bytes());
    let h = stable_hash(&key) >> 33;
    let n = next_hops.len() as u64;
    let slice = (1u64 << 31).div_ceil(n);
    next_hops.iter().nth((h / slice) as usize).copied()
}

/// Runs `atms` ATMs and `flows` long-lived flows (a packet every tick) through `steps`
/// (each at its time in ms), for `end_ms`.
pub fn run(seed: u64, atms: usize, flows: usize, steps: &[(u64, Step)], end_ms: u64) -> Outcome {
    run_with(seed, atms, flows, steps, end_ms, Measures::ON)
}

/// [`run`] with some of the daemon's consistency [`Measures`] off.
pub fn run_with(
    seed: u64,
    atms: usize,
    flows: usize,
    steps: &[(u64, Step)],
    end_ms: u64,
    m: Measures,
) -> Outcome {
    run_service(seed, atms, flows, steps, end_ms, m, service(4))
}

/// What an active-active scenario ran: the model's outcome, its flows, the faults applied.
#[derive(Debug)]
pub struct ScenarioRun {
    pub outcome: Outcome,
    pub flows: usize,
    pub faults: Vec<(u64, String)>,
}

/// A scenario file in `active-active` mode on this model: `topology.atms` ATMs, `nodes`
/// servers (default 3), `load.long_lived` flows (default 60), the VIP in `topology.ip`'s
/// family; `crash`, `restart` (a join), `stop` (a drain), `freeze` and `lose_sync` steps,
/// each 0-90 ms after its time (in 10 ms ticks, from the seed, as the turmoil runner jitters
/// its steps).
pub fn run_scenario(s: &crate::scenario::Scenario, seed: u64) -> anyhow::Result<ScenarioRun> {
    use crate::scenario::IpFamily;
    let t = &s.topology;
    anyhow::ensure!(t.ip != IpFamily::Dual, "active-active scenarios: topology.ip ipv4 or ipv6");
    let mut jitter = SplitMix64::derive(seed, "steps");
    let mut steps = Vec::new();
    let mut faults = Vec::new();
    for st in &s.steps {
        let kind = st.kind()?;
        let count = st.lose_sync.as_ref().map_or(0, |l| l.count);
        let host = st.hosts().first().map(|h| h.as_str()).unwrap_or_default().to_string();
        let atm = host
            .strip_prefix("atm")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| (1..=t.atms).contains(n));
        let Some(i) = atm.map(|n| n - 1) else {
            anyhow::bail!("active-active: `{kind}` of {host:?}: only ATMs take steps here");
        };
        let step = match kind {
            "crash" => Step::Crash(i),
            "restart" => Step::Join(i),
            "stop" => Step::Drain(i),
            "freeze" => Step::Freeze(i),
            "lose_sync" => Step::LoseSync { to: i, count },
            other => anyhow::bail!("the active-active model cannot perform `{other}` steps"),
        };
        let at = (st.at_ms / TICK_MS + jitter.next_u64() % 10) * TICK_MS;
        faults.push((at, format!("fault: {kind} {host}")));
        steps.push((at, step));
    }
    let servers = u8::try_from(if t.nodes == 0 { 3 } else { t.nodes }).unwrap_or(u8::MAX);
    let flows = if s.load.long_lived == 0 { 60 } else { s.load.long_lived as usize };
    let svc = scenario_service(servers, t.ip == IpFamily::Ipv6);
    let outcome = run_service(seed, t.atms, flows, &steps, s.duration_ms(), Measures::ON, svc);
    Ok(ScenarioRun { outcome, flows, faults })
}

fn run_service(
    seed: u64,
    atms: usize,
    flows: usize,
    steps: &[(u64, Step)],
    end_ms: u64,
    m: Measures,
    mut svc: Service,
) -> Outcome {
    let vip = svc.vip;
    let mut rng = SplitMix64::new(seed);
    let mut trace = String::new();
    let mut now = Instant::ZERO;
    let mut incarnation = 1;
    let mut nodes: Vec<Option<Atm>> = (0..atms).map(|i| Some(atm(i, atms, &svc, now, i as u64, m))).collect();
    // Router: announced set as the router sees it, and pending BGP updates.
    let mut hops: BTreeSet<usize> = BTreeSet::new();
    let mut pending: Vec<(u64, usize, bool)> = Vec::new();
    let mut frozen_at: BTreeMap<usize, u64> = BTreeMap::new();
    // Record datagrams still to lose, per receiving ATM (`Step::LoseSync`).
    let mut to_lose: BTreeMap<usize, u32> = BTreeMap::new();
    let (mut sync_lost, mut joins_without_sync) = (0, 0);
    let flow_ids: Vec<(IpAddr, u16)> = (0..flows)
        .map(|_| {
            let x = rng.next_u64();
            let client = match vip {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(0xc633_0000 | (x as u32 & 0xffff))),
                IpAddr::V6(_) => {
                    IpAddr::V6(Ipv6Addr::from_bits(0x2001_0db8_u128 << 96 | u128::from(x as u16)))
                }
            };
            (client, 1024 + (x >> 40) as u16 % 60_000)
        })
        .collect();
    // Flows start over the first second, so sync records keep coming from every ATM.
    let start_at: Vec<u64> = (0..flows).map(|_| rng.next_u64() % 100 * TICK_MS).collect();
    let mut server_of: Vec<Option<std::net::IpAddr>> = vec![None; flows];
    let mut routes: Vec<Option<usize>> = vec![None; flows];
    let mut last_ok: Vec<u64> = start_at.clone();
    let mut broken: BTreeSet<usize> = BTreeSet::new();
    let mut longest = 0;
    let mut tx = vec![0u8; 2048];
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut t = 0;
    while t <= end_ms {
        now = Instant::from_millis(t);
        for &(at, step) in steps.iter().filter(|(at, _)| *at == t) {
            let _ = writeln!(trace, "{at:>6} ms  step {step:?}");
            match step {
                Step::Drain(i) => {
                    if let Some(a) = nodes[i].as_mut() {
                        a.announcer.handle(now, Input::Shutdown);
                    }
                }
                Step::Crash(i) => {
                    nodes[i] = None;
                    pending.push((t + BGP_DELAY_MS, i, false));
                }
                Step::Freeze(i) => {
                    if let Some(a) = nodes[i].as_mut() {
                        a.frozen = true;
                        a.running = false;
                    }
                    frozen_at.insert(i, t);
                }
                Step::AddServer => {
                    svc.servers[3].weight = 1;
                    for a in nodes.iter_mut().flatten().filter(|a| !a.frozen) {
                        let _ = a.engine.set_server_state(0, 3, 1, true);
                        a.announcer.handle(now, Input::Weight { service: 0, server: 3, weight: 1 });
                    }
                }
                Step::Join(i) => {
                    incarnation += 1;
                    nodes[i] = Some(atm(i, atms, &svc, now, 100 + incarnation, m));
                }
                Step::LoseSync { to, count } => *to_lose.entry(to).or_default() += count,
            }
        }
        // Hold timers of frozen ATMs.
        for (&i, &since) in &frozen_at {
            if t == since + HOLD_MS {
                pending.push((t, i, false));
            }
        }
        // Announcers decide; decisions reach the router after the BGP delay.
        for (i, slot) in nodes.iter_mut().enumerate() {
            let Some(a) = slot else { continue };
            if a.frozen {
                continue;
            }
            let waiting = matches!(a.announcer.join_state(), JoinSync::Waiting { .. });
            a.announcer.handle(now, Input::Timeout);
            match a.announcer.join_state() {
                JoinSync::TimedOut { since, at } if waiting => {
                    let missing: Vec<String> =
                        a.full.missing().iter().map(|p| format!("atm{}", p + 1)).collect();
                    let waited = at.saturating_since(since).as_millis();
                    joins_without_sync += 1;
                    let _ = writeln!(
                        trace,
                        "{t:>6} ms  atm{} announces without a full sync after {waited} ms (missing {})",
                        i + 1,
                        missing.join(", ")
                    );
                }
                _ => {}
            }
            while let Some(action) = a.announcer.poll_action() {
                match action {
                    Action::Announce(v) => pending.push((t + BGP_DELAY_MS, i, !v.is_empty())),
                    Action::Exit => a.running = false,
                }
            }
            if !a.running && !a.frozen {
                *slot = None;
                let _ = writeln!(trace, "{t:>6} ms  atm{} exits", i + 1);
            }
        }
        pending.sort_unstable();
        let due: Vec<_> = pending.iter().copied().filter(|(at, _, _)| *at <= t).collect();
        pending.retain(|(at, _, _)| *at > t);
        for (_, i, up) in due {
            let changed = if up { hops.insert(i) } else { hops.remove(&i) };
            if changed {
                let names: Vec<String> = hops.iter().map(|h| format!("atm{}", h + 1)).collect();
                let now_routes: Vec<Option<usize>> = flow_ids.iter().map(|&f| route(&hops, f)).collect();
                let moved = now_routes.iter().zip(&routes).filter(|(a, b)| b.is_some() && a != b).count();
                routes = now_routes;
                let _ = writeln!(
                    trace,
                    "{t:>6} ms  router next hops [{}], {moved} flows re-routed",
                    names.join(", ")
                );
            }
        }
        // Traffic: one segment per flow per tick.
        for (f, &flow) in flow_ids.iter().enumerate() {
            if broken.contains(&f) || t < start_at[f] {
                continue;
            }
            let Some(a) = route(&hops, flow).and_then(|i| nodes[i].as_mut()).filter(|a| a.running) else {
                continue;
            };
            let flags = if server_of[f].is_none() { SYN } else { ACK };
            let pkt = match (flow.0, vip) {
                (IpAddr::V4(c), IpAddr::V4(v)) => build::tcp((c, flow.1), (v, 80), flags, b""),
                (IpAddr::V6(c), IpAddr::V6(v)) => build::tcp6((c, flow.1), (v, 80), flags, b""),
                _ => unreachable!("flows are in the VIP's family"),
            };
            if let Verdict::L2 { next_hop, .. } = a.engine.process(now, &pkt, &mut tx) {
                match server_of[f] {
                    None => server_of[f] = Some(next_hop),
                    Some(s) if s != next_hop => {
                        broken.insert(f);
                        let _ = writeln!(trace, "{t:>6} ms  flow {f} broken: server changed");
                    }
                    Some(_) => {}
                }
                longest = longest.max(t - last_ok[f]);
                last_ok[f] = t;
            }
        }
        // Connection sync: every running ATM to every other (insert-only on active engines);
        // full-sync requests and end markers to one peer each.
        let mut datagrams: Vec<(usize, Option<usize>, Vec<u8>)> = Vec::new();
        for (i, a) in nodes.iter_mut().enumerate() {
            let Some(a) = a.as_mut().filter(|a| a.running) else { continue };
            while let Some(len) = a.sender.poll_transmit(now, &mut a.engine, &mut buf) {
                datagrams.push((i, None, buf[..len].to_vec()));
            }
            while let Some((to, len)) = a.full.poll_transmit(now, &a.engine, &mut a.sender, &mut buf) {
                datagrams.push((i, Some(to), buf[..len].to_vec()));
            }
        }
        for (from, to, d) in &datagrams {
            for (j, b) in nodes.iter_mut().enumerate() {
                let Some(b) = b.as_mut().filter(|b| b.running && j != *from && to.is_none_or(|to| to == j))
                else {
                    continue;
                };
                // Only while a loss is armed for `j` (most runs never arm one) is its join state asked.
                let joining =
                    |b: &Atm| matches!(b.announcer.join_state(), JoinSync::Waiting { .. }) && t > b.born_ms;
                if let Some(n) = to_lose.get_mut(&j).filter(|n| **n > 0 && to.is_none() && joining(b)) {
                    *n -= 1;
                    sync_lost += 1;
                    let _ = writeln!(trace, "{t:>6} ms  sync datagram atm{} -> atm{} lost", from + 1, j + 1);
                    continue;
                }
                let r = b.receivers.entry(*from).or_insert_with(|| SyncReceiver::new(SECRET, 91));
                match r.handle_message(now, d, &mut b.engine) {
                    Ok(r @ Received::FullSyncEnd { .. }) => {
                        let incomplete = b.full.stats().ends_incomplete;
                        b.full.on_message(*from, &r, &mut b.engine, &b.sender);
                        if b.full.stats().ends_incomplete > incomplete {
                            let _ = writeln!(
                                trace,
                                "{t:>6} ms  atm{}: the end marker of atm{} counts records that did not arrive: asked again",
                                j + 1,
                                from + 1
                            );
                        }
                        if b.full.synced() && matches!(b.announcer.join_state(), JoinSync::Waiting { .. }) {
                            b.announcer.handle(now, Input::Synced);
                            if let JoinSync::Synced { since, at } = b.announcer.join_state() {
                                let waited = at.saturating_since(since).as_millis();
                                let _ = writeln!(
                                    trace,
                                    "{t:>6} ms  atm{} synced from every peer in {waited} ms",
                                    j + 1
                                );
                            }
                        }
                    }
                    Ok(r) => b.full.on_message(*from, &r, &mut b.engine, &b.sender),
                    Err(_) => {}
                }
            }
        }
        t += TICK_MS;
    }
    for (f, &ok) in last_ok.iter().enumerate() {
        if !broken.contains(&f) && end_ms - ok > UNSERVED_MS {
            broken.insert(f);
            let _ = writeln!(trace, "{end_ms:>6} ms  flow {f} broken: unserved since {ok} ms");
        }
    }
    let _ = writeln!(trace, "end: {} of {flows} flows broken, longest pause {longest} ms", broken.len());
    Outcome { broken: broken.len(), longest_pause_ms: longest, sync_lost, joins_without_sync, trace }
}
