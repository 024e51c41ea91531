//! The simulated ATM's side of the daemon's health loop ([`driver::run`]): checks answered
//! from the scripted world, and verdicts queued for the data plane's engine.
//!
//! The loop itself is the daemon's, so the simulator tests its retries, reload remapping and
//! the order of results and verdicts; only the two ends differ. A check fails while its
//! server's host is `check_fail` (scripted, or `server_down`) or not running (crashed), and
//! passes otherwise, at once (zero latency). Each verdict change is written to the trace
//! (`health: <server> down|up check=<i> reason=<r>`) and sent on a channel that the data
//! plane drains into its engine, as the daemon's active-active loop receives its verdicts.
//!
//! [`driver::run`]: clusterserver::health::driver::run

use std::future::{Future, ready};
use std::time::Duration;

use tokio::sync::mpsc;

use clusterserver::config::{Check, Server, Service};
use clusterserver::health::driver::{Checker, Report, ServerSink, Target};
use clusterserver::health::{Outcome, Transition};

use crate::net::SimClock;
use crate::world::Shared;

/// A verdict for the engine: (service, server, up).
pub type HealthVerdict = (usize, usize, bool);

/// Checks answered from the world: the server's host by its config name.
#[derive(Debug)]
pub struct ScriptedChecker {
    pub world: Shared,
}

impl Checker for ScriptedChecker {
    fn run<'a>(
        &'a self,
        _check: &'a Check,
        server: &'a Server,
        _target: Target,
    ) -> impl Future<Output = Report> + 'a {
        let failing = self.world.borrow().hosts.get(&server.name).is_none_or(|h| h.check_fail || !h.running);
        let outcome = if failing {
            Outcome::Fail { latency: Duration::ZERO, reason: "scripted".into() }
        } else {
            Outcome::Pass { latency: Duration::ZERO }
        };
        ready(Report { outcome, output: String::new() })
    }
}

/// Verdicts to the data plane's queue, transitions to the trace.
#[derive(Debug)]
pub struct Verdicts {
    pub world: Shared,
    /// The ATM's host.
    pub name: String,
    pub clock: SimClock,
    pub queue: mpsc::UnboundedSender<HealthVerdict>,
}

impl ServerSink for Verdicts {
    fn set_up(&self, service: usize, server: usize, up: bool) -> bool {
        // Only refused once the data plane is gone (its host crashed): nothing to retry for.
        self.queue.send((service, server, up)).is_ok()
    }

    fn transition(&self, services: &[Service], t: &Transition) {
        let server = &services[t.service].servers[t.server];
        let state = if t.up { "up" } else { "down" };
        let text = format!("health: {} {state} check={} reason={}", server.name, t.check, t.reason);
        self.world.borrow_mut().log(self.clock.ms(), &self.name, text);
    }
}
