//! Runs one scenario at one seed: builds the turmoil simulation, steps it tick by tick,
//! applies the scenario's faults on time, checks the invariants between ticks, and returns
//! the trace and the outcome figures.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, bail};
use clusterserver::core::election::AdminRequest;
use clusterserver::driver::Command;
use clusterserver::overrides::ServerOp;

use crate::client::PROBE_MS;
use crate::scenario::{IpFamily, Scenario, Step};
use crate::topology::*;
use crate::world::{DataplaneCommand, Shared, World};

/// What one run produced.
#[derive(Debug)]
pub struct Outcome {
    pub scenario: String,
    pub seed: u64,
    pub trace: Vec<String>,
    /// Longest outage seen by each client, ms.
    pub outage_ms: BTreeMap<String, u64>,
    /// Requests each client lost after its first answer.
    pub lost_requests: BTreeMap<String, u64>,
    /// Primaries of the cluster under test over time: (ms, names joined by '+', or "none").
    pub primaries: Vec<(u64, String)>,
    /// Owner of the VIP in each client's ARP cache at the end.
    pub arp_owner: BTreeMap<String, String>,
    pub promotions: usize,
    pub rejected: u64,
    /// Long-lived flows run and lost (server changed, or no longer answered).
    pub long_lived: u64,
    pub long_lived_lost: u64,
    pub violations: Vec<String>,
    /// Answered probes per 100 ms, per client (chart).
    pub series: BTreeMap<String, Vec<u32>>,
    /// Faults applied: (ms, description).
    pub faults: Vec<(u64, String)>,
    pub duration_ms: u64,
    /// Health faults and how long until the server left (or rejoined) the scheduler.
    pub health: Vec<HealthFigure>,
    /// Service failover figures (scenarios with a `failover` group only).
    pub failover: Vec<String>,
}

/// One health fault's figure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthFigure {
    pub at_ms: u64,
    pub server: String,
    /// The server failed (else recovered).
    pub failing: bool,
    /// Failing: its last new connection, ms after the fault (0: none). Recovering: its
    /// first new connection, ms after the recovery (`None`: none).
    pub after_ms: Option<u64>,
}

/// `expect.persistent_clients`: a client whose new connections reached more than one real
/// server (simulator and lab), given each client and the servers that took its connections.
pub fn persistence_violations<'a, S: AsRef<str> + 'a>(
    served: impl Iterator<Item = (String, &'a BTreeSet<S>)>,
) -> Vec<String> {
    served
        .filter(|(_, s)| s.len() > 1)
        .map(|(c, s)| {
            let names: Vec<&str> = s.iter().map(AsRef::as_ref).collect();
            format!("persistent client {c} reached {} real servers: {}", names.len(), names.join(", "))
        })
        .collect()
}

/// `expect.max_lost_requests` against each client's lost requests (simulator and lab).
pub fn lost_violations(s: &Scenario, lost: &BTreeMap<String, u64>) -> Vec<String> {
    let Some(max) = s.expect.max_lost_requests else { return Vec::new() };
    lost.iter()
        .filter(|(_, n)| **n > max)
        .map(|(c, n)| format!("{c}: {n} requests lost, at most {max}"))
        .collect()
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The outcome figures, one per line.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let timeline: Vec<String> = self.primaries.iter().map(|(t, p)| format!("{t}ms:{p}")).collect();
        s += &format!("primaries over time: {}\n", timeline.join(" "));
        for (c, o) in &self.outage_ms {
            s += &format!("outage {c}: {o} ms\n");
        }
        for (c, n) in self.lost_requests.iter().filter(|(_, n)| **n > 0) {
            s += &format!("requests lost {c}: {n}\n");
        }
        for (c, o) in &self.arp_owner {
            s += &format!("arp owner {c}: {o}\n");
        }
        s += &format!("promotions: {}\nheartbeats rejected: {}\n", self.promotions, self.rejected);
        if self.long_lived > 0 {
            s += &format!("long-lived flows: {} run, {} lost\n", self.long_lived, self.long_lived_lost);
        }
        for h in &self.health {
            let what = if h.failing { "last new connection" } else { "first new connection" };
            let after = h.after_ms.map_or("none".to_string(), |a| format!("{a} ms"));
            s += &format!("health {} at {} ms: {what} after {after}\n", h.server, h.at_ms);
        }
        for l in &self.failover {
            s += &format!("{l}\n");
        }
        if self.violations.is_empty() {
            s += "invariants: all hold\n";
        }
        for v in &self.violations {
            s += &format!("VIOLATION: {v}\n");
        }
        s
    }
}

/// Builds and runs `scenario` with `seed`.
pub fn run(scenario: &Scenario, seed: u64) -> anyhow::Result<Outcome> {
    if scenario.topology.mode == crate::scenario::Mode::ActiveActive {
        return active_active(scenario, seed);
    }
    let duration_ms = scenario.duration_ms();
    let tick = Duration::from_millis(4);
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_millis(duration_ms + 1000))
        .tick_duration(tick)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        .min_message_latency(Duration::from_micros(200))
        .max_message_latency(Duration::from_millis(2))
        .udp_capacity(256)
        .rng_seed(seed)
        .build();
    let world = World::new(seed);
    let names = scenario.host_names();
    let addr: BTreeMap<String, IpAddr> = names.iter().map(|n| (n.clone(), sim.lookup(n.as_str()))).collect();
    {
        let mut w = world.borrow_mut();
        for (n, a) in &addr {
            w.by_addr.insert(*a, n.clone());
            w.host(n).addr = Some(*a);
        }
        // IPv6 and dual topologies: every host is dual-stack (heartbeats stay on IPv4).
        if scenario.topology.ip != IpFamily::Ipv4 {
            for (n, a) in &addr {
                let a6 = addr6_of(*a);
                w.by_addr.insert(IpAddr::V6(a6), n.clone());
                w.host(n).addr6 = Some(a6);
            }
        }
    }
    register_hosts(&mut sim, scenario, &world, &addr)?;
    let mut state = RunState::new(scenario, &world);
    // Each fault lands 0-99 ms after its nominal time, drawn from the seed, so a sweep
    // crosses every phase of the heartbeat cycle.
    let mut jitter = crate::rng::SplitMix64::derive(seed, "steps");
    let timed: Vec<(u64, &Step)> =
        scenario.steps.iter().map(|s| (s.at_ms + jitter.next_u64() % 100, s)).collect();
    let mut steps = timed.into_iter().peekable();
    loop {
        let now_ms = sim.elapsed().as_millis() as u64;
        if now_ms >= duration_ms {
            break;
        }
        while let Some((_, step)) = steps.next_if(|(at, _)| *at <= now_ms) {
            apply(&mut sim, &world, &mut state, step, now_ms)
                .with_context(|| format!("step at {} ms", step.at_ms))?;
        }
        sim.step().map_err(|e| anyhow::anyhow!("simulation error at {now_ms} ms: {e}"))?;
        state.observe(&world, sim.elapsed().as_millis() as u64);
    }
    Ok(state.finish(scenario, seed, &world, duration_ms))
}

fn register_hosts(
    sim: &mut turmoil::Sim,
    s: &Scenario,
    world: &Shared,
    addr: &BTreeMap<String, IpAddr>,
) -> anyhow::Result<()> {
    let pick = |prefix: &str| -> Vec<(String, IpAddr)> {
        s.host_names().into_iter().filter(|n| n.starts_with(prefix)).map(|n| (n.clone(), addr[&n])).collect()
    };
    let routers = pick("router");
    let reachlist: Vec<IpAddr> = routers.iter().map(|(_, a)| *a).collect();
    let vip: IpAddr = VIP.parse()?;
    let atms = pick("atm");
    let nodes = pick("node");
    let family = s.topology.ip;
    let nodes6: Vec<(String, IpAddr)> =
        nodes.iter().map(|(n, a)| (n.clone(), IpAddr::V6(addr6_of(*a)))).collect();
    let cfg = cluster_config(s, CLUSTER_ID, &atms, reachlist.clone(), vip, &nodes);
    let cfg = Rc::new(with_family(cfg, family, &nodes6));
    world.borrow_mut().config_file = Some(cfg.clone());
    let command_ms = s.failover.as_ref().map_or(0, |f| f.command_ms);
    for (i, (name, _)) in atms.iter().enumerate() {
        world.borrow_mut().host(name).cluster = Some(CLUSTER_ID);
        sim.host(
            name.as_str(),
            crate::atm::software(world.clone(), name.clone(), cfg.clone(), i, SECRET.to_vec(), command_ms),
        );
    }
    if s.topology.second_cluster {
        let others = pick("other");
        let ocfg =
            Rc::new(cluster_config(s, OTHER_CLUSTER_ID, &others, reachlist.clone(), OTHER_VIP.parse()?, &[]));
        for (i, (name, _)) in others.iter().enumerate() {
            world.borrow_mut().host(name).cluster = Some(OTHER_CLUSTER_ID);
            sim.host(
                name.as_str(),
                crate::atm::software(world.clone(), name.clone(), ocfg.clone(), i, OTHER_SECRET.to_vec(), 0),
            );
        }
    }
    let clients = pick("client");
    let total = s.load.long_lived as usize;
    let rate = if s.load.new_connections { s.load.connections_per_s as usize } else { 0 };
    for (i, (name, _)) in clients.iter().enumerate() {
        let share = total / clients.len() + usize::from(i < total % clients.len());
        world.borrow_mut().host(name).flows_expected = u16::try_from(share).unwrap_or(u16::MAX);
        let conns = rate / clients.len() + usize::from(i < rate % clients.len());
        world.borrow_mut().host(name).conn_rate = u32::try_from(conns).unwrap_or(u32::MAX);
    }
    let users =
        routers.iter().map(|r| (r, None)).chain(clients.iter().enumerate().map(|(i, c)| (c, Some(i))));
    for ((name, _), client) in users {
        let vip = vip_for(family, client);
        world.borrow_mut().host(name).vip = Some(vip);
        sim.host(name.as_str(), crate::client::software(world.clone(), name.clone(), vip));
    }
    let of = |v6: bool| cfg.services.iter().find(|svc| svc.vip.is_ipv6() == v6);
    let spec = crate::dataplane::NodeSpec {
        vip: of(false).and_then(|svc| match svc.vip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }),
        vip6: of(true).and_then(|svc| match svc.vip {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }),
        port: 80,
        gateway: of(false).and_then(|svc| svc.gateway_vip),
        gateway6: of(true).and_then(|svc| svc.gateway_vip),
    };
    for (name, _) in &nodes {
        sim.host(name.as_str(), crate::dataplane::node_software(world.clone(), name.clone(), spec));
    }
    if s.topology.rogue {
        let targets: Vec<SocketAddr> =
            atms.iter().map(|(_, a)| SocketAddr::new(*a, cfg.heartbeat_port())).collect();
        sim.host("rogue", crate::rogue::software(world.clone(), CLUSTER_ID, cfg.heartbeat_port(), targets));
    }
    Ok(())
}

/// Faults in force and invariant bookkeeping.
struct RunState {
    all: Vec<String>,
    /// Directional blocks from partitions.
    blocked: BTreeSet<(String, String)>,
    links_down: BTreeSet<String>,
    dual_since: BTreeMap<(String, String), u64>,
    settle_ms: u64,
    last_primaries: Option<String>,
    last_change_ms: u64,
    primaries: Vec<(u64, String)>,
    /// Per client: how long its ARP cache may point elsewhere than a settled primary.
    arp_bound_ms: BTreeMap<String, u64>,
    arp_violated: BTreeSet<String>,
    violations: Vec<String>,
    /// Health faults applied: (ms, server, failing).
    health_steps: Vec<(u64, String, bool)>,
    /// The primaries by cluster as last observed (rebuilt only when they change).
    by_cluster: BTreeMap<u32, Vec<String>>,
}

impl RunState {
    fn new(s: &Scenario, world: &Shared) -> Self {
        let _ = world;
        let hb = s.cluster.heartbeat_ms.unwrap_or(100);
        let dead = hb * u64::from(s.cluster.dead_after.unwrap_or(3));
        RunState {
            all: s.host_names(),
            blocked: BTreeSet::new(),
            links_down: BTreeSet::new(),
            dual_since: BTreeMap::new(),
            settle_ms: 4 * dead + 2 * hb,
            last_primaries: None,
            last_change_ms: 0,
            primaries: Vec::new(),
            arp_bound_ms: s
                .host_names()
                .into_iter()
                .filter(|n| n.starts_with("client"))
                .map(|c| {
                    let bound = s.expect.client_outage_ms.get(&c).copied().or(s.expect.max_outage_ms);
                    (c, bound.unwrap_or(1_000))
                })
                .collect(),
            arp_violated: BTreeSet::new(),
            violations: Vec::new(),
            health_steps: Vec::new(),
            by_cluster: BTreeMap::new(),
        }
    }

    fn cut(&self, a: &str, b: &str) -> bool {
        // A scan of the few blocks, not a lookup: that would copy both names.
        self.links_down.contains(a)
            || self.links_down.contains(b)
            || self.blocked.iter().any(|(x, y)| (x == a && y == b) || (x == b && y == a))
    }

    /// Between ticks: primaries timeline and the dual-primary invariant.
    fn observe(&mut self, world: &Shared, now: u64) {
        // Every tick: the primaries are rebuilt (and the timeline's label made) only when
        // they changed.
        let changed = !world.borrow().same_primaries(&self.by_cluster);
        if changed {
            self.by_cluster = world.borrow().primaries();
        }
        let by_cluster = std::mem::take(&mut self.by_cluster);
        let mine = by_cluster.get(&CLUSTER_ID).map_or(&[][..], Vec::as_slice);
        if changed || self.last_primaries.is_none() {
            let label = if mine.is_empty() { "none".to_string() } else { mine.join("+") };
            if self.last_primaries.as_deref() != Some(&label) {
                world.borrow_mut().log(now, "sim", format!("primaries: {label}"));
                self.primaries.push((now, label.clone()));
                self.last_primaries = Some(label);
                self.last_change_ms = now;
            }
        }
        if let [p] = mine {
            self.check_arp_owner(world, p, now);
        }
        if by_cluster.values().all(|list| list.len() < 2) {
            self.dual_since.clear();
            self.by_cluster = by_cluster;
            return;
        }
        let mut seen = BTreeSet::new();
        for list in by_cluster.values() {
            for (i, a) in list.iter().enumerate() {
                for b in &list[i + 1..] {
                    if self.cut(a, b) {
                        continue;
                    }
                    let key = (a.clone(), b.clone());
                    seen.insert(key.clone());
                    let since = *self.dual_since.entry(key).or_insert(now);
                    if now - since == self.settle_ms {
                        self.violations.push(format!(
                            "two primaries that can hear each other: {a} and {b} since {since} ms (> {} ms)",
                            self.settle_ms
                        ));
                    }
                }
            }
        }
        self.dual_since.retain(|k, _| seen.contains(k));
        self.by_cluster = by_cluster;
    }

    /// Every client that can reach the settled primary `p` has its ARP cache pointing at it
    /// once the primary has been the only one for longer than the client's outage bound.
    fn check_arp_owner(&mut self, world: &Shared, p: &str, now: u64) {
        let w = world.borrow();
        let Some(p_addr) = w.hosts.get(p).and_then(|h| h.addr) else { return };
        for (c, bound) in &self.arp_bound_ms {
            if now.saturating_sub(self.last_change_ms) <= bound + 100
                || self.arp_violated.contains(c)
                || self.cut(c, p)
            {
                continue;
            }
            let Some(h) = w.hosts.get(c) else { continue };
            let vip = h.vip.unwrap_or_else(|| VIP.parse().expect("literal"));
            let owner = h.owner_of(vip);
            if owner.is_some_and(|o| o != p_addr) {
                let o = owner.map_or("none".into(), |o| w.name_of(o));
                let cache = cache_name(vip);
                self.violations.push(format!(
                    "{c}'s {cache} cache points at {o} at {now} ms, {} ms after {p} became the only primary (bound {bound} ms)",
                    now - self.last_change_ms
                ));
                self.arp_violated.insert(c.clone());
            }
        }
    }

    fn finish(mut self, s: &Scenario, seed: u64, world: &Shared, end: u64) -> Outcome {
        let w = world.borrow();
        let mut outage_ms = BTreeMap::new();
        let mut lost_requests = BTreeMap::new();
        let mut arp_owner = BTreeMap::new();
        let mut series = BTreeMap::new();
        for (name, h) in w.hosts.iter().filter(|(n, _)| n.starts_with("client")) {
            let c = &h.client;
            lost_requests.insert(name.clone(), c.lost);
            let out = match c.last_ok_ms {
                Some(last) => c.max_gap_ms.max(end - last).saturating_sub(PROBE_MS),
                None => end,
            };
            outage_ms.insert(name.clone(), out);
            series.insert(name.clone(), c.buckets.clone());
            let vip = h.vip.unwrap_or_else(|| VIP.parse().expect("literal"));
            let owner = h.owner_of(vip).map_or("none".to_string(), |o| w.name_of(o));
            arp_owner.insert(name.clone(), owner);
        }
        let long_lived: u64 = w.hosts.values().map(|h| u64::from(h.flows_expected)).sum();
        // Flows whose server a reload removed end by design (`on_down`): not lost.
        let (long_lived_lost, _on_removed) = w
            .hosts
            .values()
            .map(|h| crate::flows::lost_except_removed(&h.flows, h.flows_expected, end, &w.removed_servers))
            .fold((0, 0), |(a, b), (x, y)| (a + x, b + y));
        let promotions: usize =
            w.hosts.values().filter(|h| h.cluster == Some(CLUSTER_ID)).map(|h| h.promotions.len()).sum();
        for (name, h) in &w.hosts {
            if h.promotions.windows(2).any(|p| p[1].1 <= p[0].1) {
                self.violations.push(format!("{name}: promotion epochs not increasing: {:?}", h.promotions));
            }
        }
        let health = self.health_figures(s, &w, end);
        let mut failover = Vec::new();
        if s.failover.is_some() {
            let r = crate::failover_check::check(s, &w.trace);
            failover = r.lines;
            self.violations.extend(r.violations);
        }
        let final_primaries = w.primaries().get(&CLUSTER_ID).cloned().unwrap_or_default();
        self.check_expect(s, &outage_ms, &final_primaries, promotions, w.rejected_total, &w);
        self.violations.extend(lost_violations(s, &lost_requests));
        if let Some(max) = s.expect.long_lived_lost.filter(|m| long_lived_lost > *m) {
            self.violations
                .push(format!("{long_lived_lost} of {long_lived} long-lived flows lost, at most {max}"));
        }
        if s.expect.persistent_clients == Some(true) {
            let mut served: BTreeMap<IpAddr, BTreeSet<&str>> = BTreeMap::new();
            for (name, h) in &w.hosts {
                for c in &h.syn_clients {
                    served.entry(*c).or_default().insert(name.as_str());
                }
            }
            self.violations.extend(persistence_violations(served.iter().map(|(c, s)| (c.to_string(), s))));
        }
        if let [p] = final_primaries.as_slice()
            && end.saturating_sub(self.last_change_ms) > 2_000
        {
            for (c, owner) in &arp_owner {
                if owner != p && !self.cut(c, p) {
                    let vip =
                        w.hosts.get(c).and_then(|h| h.vip).unwrap_or_else(|| VIP.parse().expect("literal"));
                    let cache = cache_name(vip);
                    self.violations
                        .push(format!("{c}'s {cache} cache points at {owner}, the primary is {p}"));
                }
            }
        }
        Outcome {
            scenario: s.name.clone(),
            seed,
            trace: w.trace.clone(),
            outage_ms,
            lost_requests,
            primaries: self.primaries,
            arp_owner,
            promotions,
            rejected: w.rejected_total,
            long_lived,
            long_lived_lost,
            violations: self.violations,
            series,
            faults: w.faults.clone(),
            duration_ms: end,
            health,
            failover,
        }
    }

    /// For each health fault: when its server took its last new connection after failing
    /// (or its first after recovering), checked against the scenario's bounds.
    fn health_figures(&mut self, s: &Scenario, w: &World, end: u64) -> Vec<HealthFigure> {
        let mut out = Vec::new();
        for (i, (at, server, failing)) in self.health_steps.iter().enumerate() {
            let until =
                self.health_steps[i + 1..].iter().find(|(_, n, _)| n == server).map_or(end, |(t, _, _)| *t);
            let syns = w.hosts.get(server).map_or(&[][..], |h| h.syns.as_slice());
            let within: Vec<u64> = syns.iter().copied().filter(|t| (*at..until).contains(t)).collect();
            let (figure, bound) = if *failing {
                (Some(within.last().map_or(0, |t| t - at)), s.expect.removed_within_ms)
            } else {
                (within.first().map(|t| t - at), s.expect.returned_within_ms)
            };
            let what = if *failing { "removed" } else { "returned" };
            match (figure, bound) {
                (Some(f), Some(b)) if f > b => self
                    .violations
                    .push(format!("{server}: {what} {f} ms after the fault at {at} ms (bound {b} ms)")),
                (None, Some(_)) => {
                    self.violations.push(format!("{server}: no new connection after it recovered at {at} ms"))
                }
                _ => {}
            }
            out.push(HealthFigure {
                at_ms: *at,
                server: server.clone(),
                failing: *failing,
                after_ms: figure,
            });
        }
        out
    }

    fn check_expect(
        &mut self,
        s: &Scenario,
        outage: &BTreeMap<String, u64>,
        final_primaries: &[String],
        promotions: usize,
        rejected: u64,
        w: &World,
    ) {
        let e = &s.expect;
        let v = &mut self.violations;
        for (c, o) in outage {
            if let Some(max) = e.client_outage_ms.get(c).copied().or(e.max_outage_ms).filter(|m| o > m) {
                v.push(format!("{c}: outage {o} ms > {max} ms"));
            }
        }
        if s.topology.second_cluster {
            let other = w.primaries().get(&OTHER_CLUSTER_ID).cloned().unwrap_or_default();
            let flips: usize = w
                .hosts
                .values()
                .filter(|h| h.cluster == Some(OTHER_CLUSTER_ID))
                .map(|h| h.promotions.len())
                .sum();
            if other.len() != 1 || flips != 1 {
                v.push(format!("the second cluster was disturbed: primaries {other:?}, {flips} promotions"));
            }
        }
        if let Some(n) = e.primaries_after_heal.filter(|n| *n != final_primaries.len()) {
            v.push(format!(
                "{} primaries at the end ({}), expected {n}",
                final_primaries.len(),
                final_primaries.join("+")
            ));
        }
        if let Some(p) = e.final_primary.as_ref().filter(|p| final_primaries != [(*p).clone()]) {
            v.push(format!("final primary {:?}, expected {p}", final_primaries));
        }
        if let Some(m) = e.max_promotions.filter(|m| promotions > *m) {
            v.push(format!("{promotions} promotions, at most {m} expected (flapping)"));
        }
        for n in &e.never_primary {
            if w.hosts.get(n).is_some_and(|h| !h.promotions.is_empty()) {
                v.push(format!("{n} became primary"));
            }
        }
        if let Some(m) = e.min_rejected.filter(|m| rejected < *m) {
            v.push(format!("{rejected} heartbeats rejected, at least {m} expected"));
        }
        if e.long_lived_lost.is_some() && s.load.long_lived == 0 {
            v.push("expect.long_lived_lost needs load.long_lived > 0".into());
        }
        if e.persistent_clients == Some(true) && s.cluster.persistence_s.unwrap_or(0) == 0 {
            v.push("expect.persistent_clients needs cluster.persistence_s > 0".into());
        }
    }
}

fn apply(
    sim: &mut turmoil::Sim,
    world: &Shared,
    st: &mut RunState,
    step: &Step,
    now: u64,
) -> anyhow::Result<()> {
    let kind = step.kind()?;
    let log = |text: String| {
        let mut w = world.borrow_mut();
        w.faults.push((now, text.clone()));
        w.log(now, "sim", text);
    };
    match kind {
        "crash" => {
            let h = step.crash.as_deref().unwrap_or_default();
            sim.crash(h);
            world.borrow_mut().host_crashed(h);
            log(format!("fault: crash {h}"));
        }
        "kill" => {
            let h = step.kill.as_deref().unwrap_or_default();
            world.borrow_mut().kill_daemon(h);
            log(format!("fault: kill {h} (daemon only)"));
        }
        "restart" => {
            let h = step.restart.as_deref().unwrap_or_default();
            log(format!("fault: restart {h}"));
            sim.bounce(h);
        }
        "freeze" | "thaw" => {
            let h = step.freeze.as_deref().or(step.thaw.as_deref()).unwrap_or_default();
            world.borrow_mut().set_frozen(h, kind == "freeze");
            log(format!("fault: {kind} {h}"));
        }
        "stop" | "promote" | "demote" => {
            let h = step
                .stop
                .as_deref()
                .or(step.promote.as_deref())
                .or(step.demote.as_deref())
                .unwrap_or_default();
            let cmd = match kind {
                "stop" => Command::Shutdown,
                "promote" => Command::Admin(AdminRequest::Promote),
                _ => Command::Admin(AdminRequest::Demote),
            };
            let sent = world.borrow_mut().host(h).commands.as_ref().is_some_and(|tx| tx.send(cmd).is_ok());
            if !sent {
                bail!("{kind} {h}: the host's daemon is not running");
            }
            log(format!("operator: {kind} {h}"));
        }
        "reload" => {
            let r = step.reload.as_ref().expect("kind checked");
            let (file, nodes) = {
                let w = world.borrow();
                let nodes: Vec<(String, IpAddr)> = w
                    .hosts
                    .iter()
                    .filter(|(n, _)| n.starts_with("node"))
                    .filter_map(|(n, h)| Some((n.clone(), h.addr?)))
                    .collect();
                (w.config_file.clone().context("reload: no config file")?, nodes)
            };
            let new = Rc::new(crate::topology::edited(&file, r, &nodes)?);
            {
                let mut w = world.borrow_mut();
                w.config_file = Some(new.clone());
                w.removed_servers.extend(r.remove_server.iter().cloned());
            }
            // A server added must get new connections (once its checks pass), a removed one
            // none: the health figures' bounds (`returned_within_ms`, `removed_within_ms`).
            if let Some(n) = &r.add_server {
                st.health_steps.push((now, n.clone(), false));
            }
            if let Some(n) = &r.remove_server {
                st.health_steps.push((now, n.clone(), true));
            }
            for h in &r.atms {
                // The daemon's reload: plan against what it runs, then apply it in place
                // (the core by `Command::Reconfigure`, the data plane by its reload).
                let me = new.atms.iter().position(|a| &a.name == h).context("reload: not an ATM")?;
                let (running, commands, dataplane) = {
                    let mut w = world.borrow_mut();
                    let host = w.host(h);
                    (host.running_config.clone(), host.commands.clone(), host.dataplane.clone())
                };
                let (Some(running), Some(commands), Some(dataplane)) = (running, commands, dataplane) else {
                    log(format!(
                        "operator: reload {h}: its daemon is not running (it reads the file when it starts)"
                    ));
                    continue;
                };
                let plan = clusterserver::config::diff::plan(&running, &new, Some(me));
                if plan.needs_handover() {
                    bail!(
                        "reload {h}: the simulator applies live reloads only, and this plan needs the handover:\n{plan}"
                    );
                }
                let sent = commands.send(Command::Reconfigure(Box::new((*new).clone()))).is_ok()
                    && dataplane.send(DataplaneCommand::Reload(new.clone())).is_ok();
                if !sent {
                    log(format!("operator: reload {h}: its daemon is not running"));
                    continue;
                }
                world.borrow_mut().host(h).running_config = Some(new.clone());
                log(format!("operator: reload {h}: {}", plan.summary()));
                for i in &plan.items {
                    log(format!("operator: reload {h}: {}: {}", i.key, i.change));
                }
            }
        }
        "partition" => {
            let groups = step.partition.clone().unwrap_or_default();
            for (i, g) in groups.iter().enumerate() {
                for other in &groups[i + 1..] {
                    for a in g {
                        for b in other {
                            sim.partition(a.as_str(), b.as_str());
                            st.blocked.insert((a.clone(), b.clone()));
                            st.blocked.insert((b.clone(), a.clone()));
                        }
                    }
                }
            }
            log(format!("fault: partition {groups:?}"));
        }
        "partition_oneway" => {
            let o = step.partition_oneway.clone().expect("kind checked");
            for a in &o.from {
                for b in &o.to {
                    sim.partition_oneway(a.as_str(), b.as_str());
                    st.blocked.insert((a.clone(), b.clone()));
                }
            }
            log(format!("fault: partition one way {:?} -> {:?}", o.from, o.to));
        }
        "heal" => {
            for (a, b) in std::mem::take(&mut st.blocked) {
                sim.repair(a.as_str(), b.as_str());
            }
            reapply_links_down(sim, st);
            log("fault: heal".into());
        }
        "link_down" | "link_up" => {
            let h = step.link_down.as_deref().or(step.link_up.as_deref()).unwrap_or_default().to_string();
            if kind == "link_down" {
                st.links_down.insert(h.clone());
            } else {
                st.links_down.remove(&h);
                for o in st.all.iter().filter(|o| **o != h) {
                    if !st.cut(&h, o) {
                        sim.repair(h.as_str(), o.as_str());
                    }
                }
            }
            reapply_links_down(sim, st);
            log(format!("fault: {kind} {h}"));
        }
        "loss" => {
            let l = step.loss.clone().expect("kind checked");
            let mut w = world.borrow_mut();
            match l.between.as_slice() {
                [] => w.loss_all = l.percent / 100.0,
                [a, b] => {
                    let key = if a < b { (a.clone(), b.clone()) } else { (b.clone(), a.clone()) };
                    w.loss_link.insert(key, l.percent / 100.0);
                }
                _ => bail!("loss.between: expected two hosts or none"),
            }
            let text = format!("fault: loss {}% {:?}", l.percent, l.between);
            w.faults.push((now, text.clone()));
            w.log(now, "sim", text);
        }
        "latency" => {
            let l = step.latency.clone().expect("kind checked");
            let (min, max) = (Duration::from_millis(l.ms), Duration::from_millis(l.ms + l.jitter_ms));
            match l.between.as_slice() {
                [] => sim.set_max_message_latency(max),
                [a, b] => {
                    sim.set_link_latency(a.as_str(), b.as_str(), min);
                    sim.set_link_max_message_latency(a.as_str(), b.as_str(), max);
                }
                _ => bail!("latency.between: expected two hosts or none"),
            }
            log(format!("fault: latency {} ms +{} ms {:?}", l.ms, l.jitter_ms, l.between));
        }
        "forge" => {
            if !st.all.iter().any(|h| h == "rogue") {
                bail!("forge needs topology.rogue: true");
            }
            world.borrow_mut().forge_queue.push_back(step.forge.clone().expect("kind checked"));
            log("fault: forge queued".into());
        }
        "miss_garp" => {
            let m = step.miss_garp.clone().expect("kind checked");
            world.borrow_mut().host(&m.client).miss_garp = m.count;
            log(format!("fault: {} misses its next {} gratuitous ARP(s)", m.client, m.count));
        }
        "server_down" | "server_up" | "check_fail" | "check_pass" | "backend_stop" | "backend_start" => {
            let h = [
                &step.server_down,
                &step.server_up,
                &step.check_fail,
                &step.check_pass,
                &step.backend_stop,
                &step.backend_start,
            ]
            .into_iter()
            .find_map(|h| h.as_deref())
            .unwrap_or_default();
            if !h.starts_with("node") {
                bail!("{kind} {h}: only real servers (nodeN) take {kind} steps");
            }
            let failing = matches!(kind, "server_down" | "check_fail" | "backend_stop");
            {
                let mut w = world.borrow_mut();
                let host = w.host(h);
                host.check_fail = failing;
                if !kind.starts_with("check") {
                    host.server_down = failing;
                }
            }
            st.health_steps.push((now, h.to_string(), failing));
            log(format!("fault: {kind} {h}"));
        }
        "drain" | "enable" => {
            let op_step = step.drain.as_ref().or(step.enable.as_ref()).expect("kind checked");
            let op = if kind == "drain" { ServerOp::Drain } else { ServerOp::Enable };
            // As `cmc drain SERVICE SERVER` on each listed ATM, for every service of the
            // server (the admin channel's request reaches the data plane's overrides).
            let Some(cfg) = world.borrow().config_file.clone() else { bail!("{kind}: no config file") };
            let at: Vec<(usize, usize)> = cfg
                .services
                .iter()
                .enumerate()
                .filter_map(|(i, svc)| Some((i, svc.servers.iter().position(|x| x.name == op_step.server)?)))
                .collect();
            if at.is_empty() {
                bail!("{kind} {}: no service has this server", op_step.server);
            }
            for h in &op_step.atms {
                let dataplane = world.borrow_mut().host(h).dataplane.clone();
                let sent = dataplane.is_some_and(|tx| {
                    at.iter().all(|&(service, server)| {
                        tx.send(DataplaneCommand::Server { service, server, op }).is_ok()
                    })
                });
                if !sent {
                    bail!("{kind} {h}: the host's daemon is not running");
                }
            }
            st.health_steps.push((now, op_step.server.clone(), kind == "drain"));
            log(format!("operator: {kind} {} on {}", op_step.server, op_step.atms.join(", ")));
        }
        other => bail!("the simulator cannot perform `{other}` steps yet"),
    }
    Ok(())
}

/// How the trace names a client's cache for `vip`.
fn cache_name(vip: IpAddr) -> &'static str {
    if vip.is_ipv6() { "neighbour" } else { "ARP" }
}

/// An active-active scenario, on the stepped ECMP model ([`crate::ecmp`]): its flows are the
/// client's long-lived flows, its longest pause the client's outage.
fn active_active(s: &Scenario, seed: u64) -> anyhow::Result<Outcome> {
    let r = crate::ecmp::run_scenario(s, seed)?;
    let client = "client1".to_string();
    let mut violations = Vec::new();
    let max = s.expect.client_outage_ms.get(&client).copied().or(s.expect.max_outage_ms);
    if let Some(max) = max.filter(|m| r.outcome.longest_pause_ms > *m) {
        violations.push(format!("{client}: outage {} ms > {max} ms", r.outcome.longest_pause_ms));
    }
    if let Some(max) = s.expect.long_lived_lost.filter(|m| r.outcome.broken as u64 > *m) {
        violations.push(format!("{} of {} long-lived flows lost, at most {max}", r.outcome.broken, r.flows));
    }
    // A lost sync datagram must be lost (else the step tested nothing) and repaired by asking
    // again, not papered over by the joiner's bounded wait.
    let lose = s.steps.iter().filter_map(|st| st.lose_sync.as_ref()).map(|l| u64::from(l.count)).sum::<u64>();
    if lose > 0 {
        if r.outcome.sync_lost < lose {
            violations.push(format!(
                "lose_sync: {} of {lose} sync datagrams lost (no join waited for them)",
                r.outcome.sync_lost
            ));
        }
        if r.outcome.joins_without_sync > 0 {
            violations.push(format!(
                "{} join(s) announced without every peer's table after a lost sync datagram",
                r.outcome.joins_without_sync
            ));
        }
    }
    let unsupported = [
        s.expect.primaries_after_heal.map(|_| "primaries_after_heal"),
        s.expect.final_primary.as_ref().map(|_| "final_primary"),
        s.expect.max_promotions.map(|_| "max_promotions"),
    ];
    if let Some(key) = unsupported.into_iter().flatten().next() {
        bail!("expect.{key}: active-active scenarios have no primary");
    }
    Ok(Outcome {
        scenario: s.name.clone(),
        seed,
        trace: r.outcome.trace.lines().map(String::from).collect(),
        outage_ms: BTreeMap::from([(client.clone(), r.outcome.longest_pause_ms)]),
        lost_requests: BTreeMap::new(),
        primaries: Vec::new(),
        arp_owner: BTreeMap::new(),
        promotions: 0,
        rejected: 0,
        long_lived: r.flows as u64,
        long_lived_lost: r.outcome.broken as u64,
        violations,
        series: BTreeMap::new(),
        faults: r.faults,
        duration_ms: s.duration_ms(),
        health: Vec::new(),
        failover: Vec::new(),
    })
}

fn reapply_links_down(sim: &mut turmoil::Sim, st: &RunState) {
    for h in &st.links_down {
        for o in st.all.iter().filter(|o| *o != h) {
            sim.partition(h.as_str(), o.as_str());
        }
    }
}
