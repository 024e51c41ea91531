//! The daemon's health checking: the shared loop ([`crate::health::driver`]) wired with the
//! real checkers ([`LinuxChecker`]) and the process clock, its verdicts pushed to the engine
//! on the TUN worker.
//!
//! Every ATM runs every service's checks, primary **and** backups, and applies the
//! verdicts to its engine whether it forwards or not: a backup promoted at any moment
//! starts with warm health state. Checks run concurrently on the control loop's runtime
//! (each bounded by its timeout; an exec check's process group is killed on expiry).
//!
//! Verdicts reach the engine through the shell's control queue, drained by the worker
//! between packets on its tick: the packet path takes no lock. A full queue is retried
//! every [`RETRY`] until the change is accepted, newest verdict winning. The log lines are
//! the driver's (see there).

use std::cell::RefCell;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::admin::CoreBridge;
use crate::config::Service;
use crate::health::driver;
use crate::health::{Outcome, ProbeId};
use crate::platform::linux::checks::LinuxChecker;
use crate::platform::linux::clock::ProcessClock;
use crate::platform::linux::shell::plane::DataPlane;

pub use crate::health::driver::{RETRY, STATS_EVERY, ServerSink, Update, kind_name};

use super::processor::DaemonProcessor;

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

/// Runs the checks of `services` forever with the real checkers, pushing every verdict
/// change to `sink` and applying the live reloads on `updates` ([`driver::run`]).
pub async fn run<S: ServerSink>(
    services: &[Service],
    sink: &S,
    updates: Option<mpsc::UnboundedReceiver<Update>>,
) {
    driver::run(&LinuxChecker, &ProcessClock, services, sink, updates).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{Check, CheckKind, Forwarding, SchedulerKind};
    use crate::testkit;

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
            // $1 = the server's port (its index here).
            command: vec!["/bin/sh".into(), "-c".into(), script, "sh".into(), "{port}".into()],
            interval_ms: 100,
            timeout_ms: 90,
            rise: 2,
            fall: 3,
            ..testkit::check(CheckKind::Exec)
        };
        let localhost: std::net::IpAddr = "127.0.0.1".parse().expect("ip");
        let svc = Service::builder("web", "10.0.0.99".parse::<std::net::IpAddr>().expect("ip"), 80)
            .forwarding(Forwarding::Dr)
            .scheduler(SchedulerKind::Rr)
            .servers((0..2).map(|i| testkit::server(&format!("s{i}"), localhost, i as u16, 1)))
            .check(check)
            .build();
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
