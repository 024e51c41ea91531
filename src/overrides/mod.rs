//! The operator's hand on each real server, kept beside the engine (the daemon's TUN
//! worker, the simulator's data plane): sans-IO, so both run this code.
//!
//! Two sources change a server: the health checks (up/down) and the operator (weight,
//! drain, enable, disable). The engine has one weight and one `up` per server, so this
//! overlay keeps both inputs and derives the engine's state from them: a health verdict never
//! undoes an operator's drain or disable.
//!
//! | admin state | engine weight | engine up |
//! | --- | --- | --- |
//! | enabled | runtime weight | health |
//! | drained | 0 (no new connections; existing ones carry on) | health |
//! | disabled | runtime weight | false (as if failed: `on_down` applies) |
//!
//! The runtime weight is the operator's (`cmc weight`) if set, else the configured one. An
//! operator's state and weight are **overrides**: they outlive reloads (carried by
//! [`ServerControl::reconfigure`]) and restarts (saved in the state file whose format is
//! [`file`]). `cmc enable` clears both: the server is back to its config.

pub mod file;

use crate::dataplane::engine::{Engine, EngineError};
use crate::dataplane::settings::{Remap, ServiceSettings};

/// The operator's state of one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminState {
    Enabled,
    Drained,
    Disabled,
}

impl AdminState {
    pub fn name(self) -> &'static str {
        match self {
            AdminState::Enabled => "enabled",
            AdminState::Drained => "drained",
            AdminState::Disabled => "disabled",
        }
    }
}

/// One server's inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerInputs {
    pub healthy: bool,
    /// The weight in the config.
    pub config_weight: u32,
    /// The operator's weight (`cmc weight`), if set.
    pub weight_override: Option<u32>,
    pub state: AdminState,
}

impl ServerInputs {
    /// The runtime weight: the operator's if set, else the configured one.
    pub fn weight(&self) -> u32 {
        self.weight_override.unwrap_or(self.config_weight)
    }

    /// The weight the operator leaves the server, health aside: 0 while drained or
    /// disabled. (Active-active's announcer counts a server only while this is above 0.)
    pub fn operator_weight(&self) -> u32 {
        match self.state {
            AdminState::Enabled => self.weight(),
            AdminState::Drained | AdminState::Disabled => 0,
        }
    }

    /// Whether the operator changed anything (an override to keep across restarts).
    pub fn overridden(&self) -> bool {
        self.state != AdminState::Enabled || self.weight_override.is_some()
    }

    /// (weight, up) as the engine must have them.
    fn engine_state(&self) -> (u32, bool) {
        match self.state {
            AdminState::Enabled => (self.weight(), self.healthy),
            AdminState::Drained => (0, self.healthy),
            AdminState::Disabled => (self.weight(), false),
        }
    }
}

/// What an operator asks of a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerOp {
    Weight(u32),
    Drain,
    /// Back to the config: enabled, the configured weight.
    Enable,
    Disable,
}

/// An operator's override of one server, as saved and restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Override {
    pub state: AdminState,
    pub weight: Option<u32>,
}

/// Overrides by (service, server) index.
pub type Overrides = Vec<((usize, usize), Override)>;

/// Every server's inputs, indexed like the engine's services and servers.
#[derive(Clone, Debug, Default)]
pub struct ServerControl {
    inputs: Vec<Vec<ServerInputs>>,
    /// Bumped by every operator change, restore and reload (orders saved snapshots).
    generation: u64,
}

impl ServerControl {
    /// Starts from the engine's current servers (all healthy, enabled).
    pub fn new(engine: &Engine, services: usize) -> Self {
        let inputs = (0..services)
            .map(|svc| {
                engine
                    .servers(svc)
                    .iter()
                    .map(|s| ServerInputs {
                        healthy: s.up,
                        config_weight: s.weight,
                        weight_override: None,
                        state: AdminState::Enabled,
                    })
                    .collect()
            })
            .collect();
        ServerControl { inputs, generation: 0 }
    }

    pub fn inputs(&self, service: usize, server: usize) -> Option<ServerInputs> {
        self.inputs.get(service).and_then(|s| s.get(server)).copied()
    }

    /// The operator's overrides, by (service, server) index, and the generation they are of.
    pub fn overrides(&self) -> (u64, Overrides) {
        let all = self
            .inputs
            .iter()
            .enumerate()
            .flat_map(|(si, v)| v.iter().enumerate().map(move |(ri, i)| ((si, ri), i)))
            .filter(|(_, i)| i.overridden())
            .map(|(k, i)| (k, Override { state: i.state, weight: i.weight_override }))
            .collect();
        (self.generation, all)
    }

    /// Puts saved overrides back (at start-up); unknown indices are skipped.
    pub fn restore(&mut self, engine: &mut Engine, saved: &[((usize, usize), Override)]) {
        for &((service, server), o) in saved {
            if let Some(i) = self.slot(service, server) {
                i.state = o.state;
                i.weight_override = o.weight;
                let _ = self.push(engine, service, server);
            }
        }
        self.generation += 1;
    }

    /// A health verdict.
    pub fn set_health(&mut self, engine: &mut Engine, service: usize, server: usize, up: bool) {
        if let Some(i) = self.slot(service, server) {
            i.healthy = up;
            let _ = self.push(engine, service, server);
        }
    }

    /// An operator's change; refused for an unknown server.
    pub fn apply(
        &mut self,
        engine: &mut Engine,
        service: usize,
        server: usize,
        op: ServerOp,
    ) -> Result<(), EngineError> {
        let i = self.slot(service, server).ok_or(EngineError::NoSuchServer { service, server })?;
        match op {
            ServerOp::Weight(w) => i.weight_override = Some(w),
            ServerOp::Drain => i.state = AdminState::Drained,
            ServerOp::Enable => {
                i.state = AdminState::Enabled;
                i.weight_override = None;
            }
            ServerOp::Disable => i.state = AdminState::Disabled,
        }
        self.generation += 1;
        self.push(engine, service, server)
    }

    /// A live reload, after [`Engine::reconfigure`] with the same `remap`: a server that
    /// stays keeps its health and the operator's overrides and takes its new configured
    /// weight; a new one starts as the engine started it (down until its checks pass, or
    /// up), enabled. The engine gets every server whose derived state differs from its own.
    pub fn reconfigure(&mut self, engine: &mut Engine, remap: &Remap, new: &[ServiceSettings]) {
        let mut inputs = Vec::with_capacity(new.len());
        for (j, svc) in new.iter().enumerate() {
            let from = remap.services.iter().position(|&m| m == Some(j));
            let row: Vec<ServerInputs> = svc
                .servers
                .iter()
                .enumerate()
                .map(|(k, srv)| {
                    let was = from.and_then(|i| {
                        let r = remap.servers.get(i)?.iter().position(|&m| m == Some(k))?;
                        self.inputs(i, r)
                    });
                    let slot = engine.servers(j).get(k);
                    match was {
                        Some(w) => ServerInputs { config_weight: srv.weight, ..w },
                        None => ServerInputs {
                            healthy: slot.is_some_and(|s| s.up),
                            config_weight: srv.weight,
                            weight_override: None,
                            state: AdminState::Enabled,
                        },
                    }
                })
                .collect();
            inputs.push(row);
        }
        self.inputs = inputs;
        self.generation += 1;
        for j in 0..self.inputs.len() {
            for k in 0..self.inputs[j].len() {
                let want = self.inputs[j][k].engine_state();
                let have = engine.servers(j).get(k).map(|s| (s.weight, s.up));
                if have != Some(want) {
                    let _ = self.push(engine, j, k);
                }
            }
        }
    }

    fn slot(&mut self, service: usize, server: usize) -> Option<&mut ServerInputs> {
        self.inputs.get_mut(service).and_then(|s| s.get_mut(server))
    }

    fn push(&self, engine: &mut Engine, service: usize, server: usize) -> Result<(), EngineError> {
        let (weight, up) = self.inputs[service][server].engine_state();
        engine.set_server_state(service, server, weight, up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Forwarding, SchedulerKind, Service, Table};
    use crate::dataplane::engine::EngineConfig;
    use core::net::Ipv4Addr;

    fn engine() -> Engine {
        let svc = Service::builder("web", Ipv4Addr::new(10, 0, 0, 99), 80)
            .forwarding(Forwarding::Nat)
            .scheduler(SchedulerKind::Wrr)
            .server("a", Ipv4Addr::new(10, 0, 1, 1), 80, 5)
            .server("b", Ipv4Addr::new(10, 0, 1, 2), 80, 5)
            .build();
        Engine::new(&EngineConfig {
            services: vec![svc.settings()],
            table: Table::default(),
            local_addr: "10.0.0.1".parse().expect("ip"),
            local_addr6: core::net::Ipv6Addr::UNSPECIFIED,
            path_mtu: 1500,
            seed: 1,
        })
    }

    #[test]
    fn health_never_undoes_an_operator_and_enable_clears_the_overrides() {
        let mut e = engine();
        let mut c = ServerControl::new(&e, 1);
        c.apply(&mut e, 0, 1, ServerOp::Weight(9)).expect("weight");
        assert_eq!((e.servers(0)[1].weight, e.servers(0)[1].up), (9, true));
        c.apply(&mut e, 0, 1, ServerOp::Drain).expect("drain");
        c.set_health(&mut e, 0, 1, true);
        assert_eq!(e.servers(0)[1].weight, 0, "a health pass keeps the drain");
        c.apply(&mut e, 0, 1, ServerOp::Disable).expect("disable");
        c.set_health(&mut e, 0, 1, true);
        assert!(!e.servers(0)[1].up, "a health pass keeps the disable");
        c.set_health(&mut e, 0, 1, false);
        assert_eq!(c.overrides().1.len(), 1);
        c.apply(&mut e, 0, 1, ServerOp::Enable).expect("enable");
        assert_eq!(
            (e.servers(0)[1].weight, e.servers(0)[1].up),
            (5, false),
            "config weight back, health kept"
        );
        assert!(c.overrides().1.is_empty(), "enable clears every override");
        c.set_health(&mut e, 0, 1, true);
        assert!(e.servers(0)[1].up);
        assert_eq!(e.servers(0)[0].weight, 5, "the other server untouched");
        assert!(c.apply(&mut e, 0, 2, ServerOp::Drain).is_err());
        assert!(c.apply(&mut e, 1, 0, ServerOp::Drain).is_err());
    }
}
