//! The one async loop around the [`Health`] state machine, shared by the daemon and the
//! simulator.
//!
//! [`run`] carries out the machine's actions: it starts every due check as a future (through
//! a [`Checker`]), feeds each run's [`Report`] back, delivers every verdict change to a
//! [`ServerSink`] (retrying a refused one every [`RETRY`], newest verdict winning), applies
//! live reloads ([`Update`]) and logs each transition. It makes no decision of its own and
//! touches no platform: the daemon wires it with the Linux checkers and the process clock
//! (`crate::daemon::health`), the simulator with checks answered from its scripted world and
//! its virtual clock. One loop rather than two copies, so the simulator tests the daemon's
//! code: retries, reload remapping and the order of results and verdicts included.
//!
//! Every `select!` is `biased` (reloads, then results, then timers) so that a simulated run
//! is a pure function of its seed.
//!
//! Every transition is one log line, target `clusterserverd::health`:
//!
//! ```text
//! INFO clusterserverd::health: server down service=web server=web2 address=10.0.2.21 check=http reason=status_503 latency_ms=2 output=""
//! INFO clusterserverd::health: server up service=web server=web2 address=10.0.2.21 check=http reason=2_passes latency_ms=1 output=""
//! ```
//!
//! `output` is what an exec or agent program printed (bounded, quoted); every run's output
//! is also logged at `debug`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;

use super::{Action, Damping, Health, Input, Outcome, ProbeId, Transition};
use crate::config::{Check, CheckKind, Protocol, Server, Service, diff::Remap};
use crate::time::Instant;

/// Delay before a verdict the sink refused is offered again.
pub const RETRY: Duration = Duration::from_millis(100);
/// Interval of the per-probe counters summary (at `debug`: passes, failures, timeouts,
/// latency), until the admin channel exports them.
pub const STATS_EVERY: Duration = Duration::from_secs(60);

/// The server a check looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub address: IpAddr,
    /// The check's `port`, else the server's.
    pub port: u16,
    pub protocol: Protocol,
}

/// What one run found, with a program's output for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub outcome: Outcome,
    /// exec/agent: captured stdout and stderr (bounded), else empty.
    pub output: String,
}

/// Runs checks: the Linux checkers in the daemon, the scripted world in the simulator.
pub trait Checker {
    /// Runs `check` once against `target` (the address of `server`, which the simulator
    /// finds its host by), giving up after the check's timeout.
    fn run<'a>(
        &'a self,
        check: &'a Check,
        server: &'a Server,
        target: Target,
    ) -> impl Future<Output = Report> + 'a;
}

/// The loop's clock: instants of the sans-IO layers and the timer moments they stand for.
pub trait Clock {
    fn now(&self) -> Instant;
    /// The timer moment of `t` (for `sleep_until`).
    fn at(&self, t: Instant) -> tokio::time::Instant;
}

/// Where verdicts go: the engine (daemon, simulator) or a test's record.
pub trait ServerSink {
    /// Marks server `server` of service `service` up or down; `false` if it could not be
    /// delivered now (retried later).
    fn set_up(&self, service: usize, server: usize, up: bool) -> bool;

    /// One check run finished (for the admin channel's counters; default: ignored).
    fn check_ran(&self, _probe: ProbeId, _outcome: &Outcome) {}

    /// A verdict changed (called once, before its delivery; for the simulator's trace,
    /// default: ignored). The daemon logs it through `tracing` in any case.
    fn transition(&self, _services: &[Service], _t: &Transition) {}

    /// A live reload: the services from now on (indices of later calls refer to them).
    fn reconfigured(&self, _services: &[Service]) {}
}

/// A live reload for [`run`]: the services it ran and the new ones, and how they map.
#[derive(Clone, Debug)]
pub struct Update {
    pub old: Vec<Service>,
    pub new: Vec<Service>,
    pub remap: Remap,
}

type Running<'c> = FuturesUnordered<Pin<Box<dyn Future<Output = (ProbeId, Report)> + 'c>>>;

/// Runs the checks of `services` forever, pushing every verdict change to `sink`. A live
/// reload arrives on `updates` ([`Health::reconfigure`]): checks in flight are dropped
/// (their indices are the old config's), verdicts not yet delivered follow their server to
/// its new index (those of removed servers are dropped).
pub async fn run<C: Checker, K: Clock, S: ServerSink>(
    checker: &C,
    clock: &K,
    services: &[Service],
    sink: &S,
    mut updates: Option<mpsc::UnboundedReceiver<Update>>,
) {
    let mut services: Rc<Vec<Service>> = Rc::new(services.to_vec());
    let mut health = Health::new(&services, Damping::default(), clock.now());
    let mut running: Running<'_> = FuturesUnordered::new();
    // Verdicts not yet accepted by the sink, newest per server.
    let mut undelivered: BTreeMap<(usize, usize), bool> = BTreeMap::new();
    let mut last: BTreeMap<ProbeId, Report> = BTreeMap::new();
    health.handle(clock.now(), Input::Tick);
    let mut stats_at = clock.at(Instant::ZERO) + STATS_EVERY;
    loop {
        while let Some(action) = health.poll_action() {
            match action {
                Action::RunCheck { probe, .. } => {
                    running.push(Box::pin(run_probe(checker, Rc::clone(&services), probe)))
                }
                Action::Transition(t) => {
                    log_transition(&services, &t, &last);
                    sink.transition(&services, &t);
                    undelivered.insert((t.service, t.server), t.up);
                }
            }
        }
        undelivered.retain(|(service, server), up| !sink.set_up(*service, *server, *up));
        let wake = health.poll_timeout().map(|t| clock.at(t));
        let retry = !undelivered.is_empty();
        tokio::select! {
            biased;
            Some(u) = async { match updates.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => {
                running = FuturesUnordered::new();
                last.clear();
                undelivered = undelivered
                    .into_iter()
                    .filter_map(|((s, r), up)| u.remap.server(s, r).map(|k| (k, up)))
                    .collect();
                health.reconfigure(clock.now(), &u.old, &u.new, &u.remap);
                services = Rc::new(u.new);
                sink.reconfigured(&services);
                tracing::info!(target: "clusterserverd::health", services = services.len(), probes = health.probes().count(), "checks reloaded: unchanged ones keep their state");
            }
            Some((probe, report)) = running.next(), if !running.is_empty() => {
                if !report.output.is_empty() {
                    tracing::debug!(target: "clusterserverd::health", service = %services[probe.service].name, server = %services[probe.service].servers[probe.server].name, check = probe.check, output = ?report.output, "program output");
                }
                let outcome = report.outcome.clone();
                sink.check_ran(probe, &outcome);
                last.insert(probe, report);
                health.handle(clock.now(), Input::Result { probe, outcome });
            }
            _ = sleep_until(wake) => health.handle(clock.now(), Input::Tick),
            _ = tokio::time::sleep(RETRY), if retry => {}
            _ = tokio::time::sleep_until(stats_at) => {
                stats_at += STATS_EVERY;
                log_stats(&services, &health);
            }
        }
    }
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn run_probe<C: Checker>(checker: &C, services: Rc<Vec<Service>>, probe: ProbeId) -> (ProbeId, Report) {
    let svc = &services[probe.service];
    let srv = &svc.servers[probe.server];
    let check = &svc.checks[probe.check];
    let target =
        Target { address: srv.address, port: check.port.unwrap_or(srv.port), protocol: svc.protocol };
    (probe, checker.run(check, srv, target).await)
}

/// The config word of a check kind.
pub fn kind_name(k: CheckKind) -> &'static str {
    match k {
        CheckKind::Ping => "ping",
        CheckKind::Tcp => "tcp",
        CheckKind::Http => "http",
        CheckKind::Https => "https",
        CheckKind::Exec => "exec",
        CheckKind::Agent => "agent",
    }
}

fn log_stats(services: &[Service], health: &Health) {
    for (p, up, st) in health.probes() {
        let svc = &services[p.service];
        let runs = (st.passes + st.failures).max(1);
        let avg_ms = st.latency_sum.as_millis() / u128::from(runs);
        tracing::debug!(target: "clusterserverd::health", service = %svc.name, server = %svc.servers[p.server].name, check = %kind_name(svc.checks[p.check].kind), up, passes = st.passes, failures = st.failures, timeouts = st.timeouts, latency_avg_ms = avg_ms, latency_max_ms = st.latency_max.as_millis(), "check counters");
    }
}

fn log_transition(services: &[Service], t: &Transition, last: &BTreeMap<ProbeId, Report>) {
    let svc = &services[t.service];
    let srv = &svc.servers[t.server];
    let probe = ProbeId { service: t.service, server: t.server, check: t.check };
    let report = last.get(&probe);
    let latency_ms = report.map_or(0, |r| match &r.outcome {
        Outcome::Pass { latency } | Outcome::Fail { latency, .. } => latency.as_millis(),
        Outcome::Timeout => u128::from(svc.checks[t.check].timeout_ms),
    });
    let output = report.map_or("", |r| r.output.as_str());
    let kind = kind_name(svc.checks[t.check].kind);
    let state = if t.up { "server up" } else { "server down" };
    tracing::info!(target: "clusterserverd::health", service = %svc.name, server = %srv.name, address = %srv.address, check = %kind, reason = %t.reason, latency_ms, output = ?output, "{state}");
}
