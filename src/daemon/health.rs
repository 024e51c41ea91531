//! The daemon's health checking: the [`Health`] state machine driven by the real checkers
//! ([`checks`]), its verdicts pushed to the engine on the TUN worker.
//!
//! Every ATM runs every service's checks, primary **and** backups, and applies the
//! verdicts to its engine whether it forwards or not: a backup promoted at any moment
//! starts with warm health state. Checks run concurrently on the control loop's runtime
//! (each bounded by its timeout; an exec check's process group is killed on expiry).
//!
//! Verdicts reach the engine through the shell's control queue, drained by the worker
//! between packets on its tick: the packet path takes no lock. A full queue is retried
//! every [`RETRY`] until the change is accepted, newest verdict winning.
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

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;

use crate::admin::CoreBridge;
use crate::config::{CheckKind, Service, diff::Remap};
use crate::health::{Action, Damping, Health, Input, Outcome, ProbeId, Transition};
use crate::platform::linux::checks::{self, Report, Target};
use crate::platform::linux::shell::plane::DataPlane;

use super::processor::DaemonProcessor;

/// Delay before a verdict the engine's control queue refused is offered again.
pub const RETRY: Duration = Duration::from_millis(100);
/// Interval of the per-probe counters summary (at `debug`: passes, failures, timeouts,
/// latency), until the admin channel exports them.
pub const STATS_EVERY: Duration = Duration::from_secs(60);

/// Where verdicts go: the engine (daemon) or a test's record.
pub trait ServerSink {
    /// Marks server `server` of service `service` up or down; `false` if it could not be
    /// delivered now (retried later).
    fn set_up(&self, service: usize, server: usize, up: bool) -> bool;

    /// One check run finished (for the admin channel's counters; default: ignored).
    fn check_ran(&self, _probe: ProbeId, _outcome: &Outcome) {}

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

impl ServerSink for DataPlane<DaemonProcessor> {
    fn set_up(&self, service: usize, server: usize, up: bool) -> bool {
        let f = Arc::new(move |p: &mut DaemonProcessor| {
            // Health only: an operator's weight, drain or disable stays (see `servers`).
            p.servers.set_health(&mut p.engine, service, server, up);
        });
        self.apply(f).is_ok()
    }
}

/// The daemon's sink: verdicts to the engine, and each delivered one (and every check run's
/// counters) published to the admin channel through its bridge. Used in both modes: the
/// primary/backup loop with the platform's bridge and clock, the active-active loop with its
/// own.
#[derive(Debug)]
pub struct Publishing<'a> {
    pub shell: &'a DataPlane<DaemonProcessor>,
    pub bridge: Option<&'a CoreBridge>,
    /// Origin of the events' `at_ms` (the control loop's clock).
    pub since: tokio::time::Instant,
    /// The running services (names for the events); replaced by a live reload.
    pub services: RefCell<Vec<Service>>,
}

impl ServerSink for Publishing<'_> {
    fn set_up(&self, service: usize, server: usize, up: bool) -> bool {
        let ok = self.shell.set_up(service, server, up);
        let services = self.services.borrow();
        if ok
            && let (Some(b), Some(svc)) = (self.bridge, services.get(service))
            && let Some(srv) = svc.servers.get(server)
        {
            b.health(self.since.elapsed().as_millis() as u64, &svc.name, &srv.name, up);
        }
        ok
    }

    fn check_ran(&self, probe: ProbeId, outcome: &Outcome) {
        let services = self.services.borrow();
        let kind = services.get(probe.service).and_then(|s| s.checks.get(probe.check)).map(|c| c.kind);
        if let (Some(b), Some(kind)) = (self.bridge, kind) {
            b.check_ran(probe, kind_name(kind), outcome);
        }
    }

    fn reconfigured(&self, services: &[Service]) {
        *self.services.borrow_mut() = services.to_vec();
    }
}

type Running = FuturesUnordered<Pin<Box<dyn Future<Output = (ProbeId, Report)>>>>;

/// Runs the checks of `services` forever, pushing every verdict change to `sink`. A live
/// reload arrives on `updates` ([`Health::reconfigure`]): checks in flight are dropped
/// (their indices are the old config's), verdicts not yet delivered follow their server to
/// its new index (those of removed servers are dropped).
pub async fn run<S: ServerSink>(
    services: &[Service],
    sink: &S,
    mut updates: Option<mpsc::UnboundedReceiver<Update>>,
) {
    // The process's clock origin: instants mean the same moment in every loop.
    let start = crate::platform::linux::clock::origin();
    let now = crate::platform::linux::clock::now;
    let mut services: Rc<Vec<Service>> = Rc::new(services.to_vec());
    let mut health = Health::new(&services, Damping::default(), now());
    let mut running: Running = FuturesUnordered::new();
    // Verdicts not yet accepted by the sink, newest per server.
    let mut undelivered: BTreeMap<(usize, usize), bool> = BTreeMap::new();
    let mut last: BTreeMap<ProbeId, Report> = BTreeMap::new();
    health.handle(now(), Input::Tick);
    let mut stats_at = start + STATS_EVERY;
    loop {
        while let Some(action) = health.poll_action() {
            match action {
                Action::RunCheck { probe, .. } => {
                    running.push(Box::pin(run_probe(Rc::clone(&services), probe)))
                }
                Action::Transition(t) => {
                    log_transition(&services, &t, &last);
                    undelivered.insert((t.service, t.server), t.up);
                }
            }
        }
        undelivered.retain(|(service, server), up| !sink.set_up(*service, *server, *up));
        let wake = health.poll_timeout().map(|t| start + Duration::from_nanos(t.as_nanos()));
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
                health.reconfigure(now(), &u.old, &u.new, &u.remap);
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
                health.handle(now(), Input::Result { probe, outcome });
            }
            _ = sleep_until(wake) => health.handle(now(), Input::Tick),
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

async fn run_probe(services: Rc<Vec<Service>>, probe: ProbeId) -> (ProbeId, Report) {
    let svc = &services[probe.service];
    let srv = &svc.servers[probe.server];
    let check = &svc.checks[probe.check];
    let target =
        Target { address: srv.address, port: check.port.unwrap_or(srv.port), protocol: svc.protocol };
    (probe, checks::run(check, target).await)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Check, Forwarding, OnDown, Protocol, SchedulerKind, Server};

    /// Records verdicts; refuses the first `refuse` deliveries (a full control queue).
    struct Record {
        got: RefCell<Vec<(usize, bool)>>,
        refuse: RefCell<u32>,
        changed: tokio::sync::Notify,
    }

    impl ServerSink for Record {
        fn set_up(&self, _service: usize, server: usize, up: bool) -> bool {
            let mut r = self.refuse.borrow_mut();
            if *r > 0 {
                *r -= 1;
                return false;
            }
            self.got.borrow_mut().push((server, up));
            self.changed.notify_one();
            true
        }
    }

    /// Real exec checks that read a flag file per server; the test flips a flag and waits
    /// for the verdicts the rise/fall counts call for.
    #[test]
    fn exec_verdicts_reach_the_sink_after_fall_and_rise() {
        let dir = std::env::temp_dir().join(format!("cs-daemon-health-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let flag = |i: usize| dir.join(format!("down-{i}"));
        let script = format!("test ! -e {}/down-$1", dir.display());
        let check = Check {
            kind: CheckKind::Exec,
            path: None,
            expect_status: None,
            // $1 = the server's port (its index here).
            command: vec!["/bin/sh".into(), "-c".into(), script, "sh".into(), "{port}".into()],
            port: None,
            interval_ms: 100,
            timeout_ms: 90,
            rise: 2,
            fall: 3,
        };
        let servers = (0..2)
            .map(|i| Server {
                name: format!("s{i}"),
                address: "127.0.0.1".parse().expect("ip"),
                port: i as u16,
                weight: 1,
            })
            .collect();
        let svc = Service {
            name: "web".into(),
            vip: "10.0.0.99".parse().expect("ip"),
            port: 80,
            protocol: Protocol::Tcp,
            forwarding: Forwarding::Dr,
            scheduler: SchedulerKind::Rr,
            persistence_s: 0,
            gateway_vip: None,
            on_down: OnDown::Keep,
            servers,
            checks: vec![check],
        };
        std::fs::write(flag(1), "").expect("flag");
        let sink = Record {
            got: RefCell::new(Vec::new()),
            refuse: RefCell::new(2),
            changed: tokio::sync::Notify::new(),
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async {
            let services = [svc];
            let health = run(&services, &sink, None);
            tokio::pin!(health);
            let wait_for = |n: usize| {
                let sink = &sink;
                async move {
                    while sink.got.borrow().len() < n {
                        sink.changed.notified().await;
                    }
                }
            };
            let t0 = tokio::time::Instant::now();
            tokio::select! { _ = &mut health => unreachable!(), _ = wait_for(1) => {} }
            // Three failed runs at 0, 100, 200 ms; then two refusals, delivered on a retry.
            let down_after = t0.elapsed();
            assert!(down_after >= Duration::from_millis(200), "{down_after:?}");
            assert_eq!(sink.got.borrow()[0], (1, false));
            std::fs::remove_file(flag(1)).expect("unflag");
            tokio::select! { _ = &mut health => unreachable!(), _ = wait_for(2) => {} }
            assert_eq!(sink.got.borrow()[1], (1, true));
        });
        let got = sink.got.borrow().clone();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(got, [(1, false), (1, true)], "server 0 never changed");
    }
}
