//! The operator's hand on each real server, kept beside the engine on the TUN worker.
//!
//! Two sources change a server: the health checks (up/down) and the operator (weight,
//! drain, enable, disable). The engine has one weight and one `up` per server, so this
//! overlay keeps both inputs and derives the engine's state from them: a health verdict never
//! undoes an operator's drain or disable, and `enable` gives back the operator's weight
//! (the configured one until `cmc weight` changes it).
//!
//! | admin state | engine weight | engine up |
//! | --- | --- | --- |
//! | enabled | operator weight | health |
//! | drained | 0 (no new connections; existing ones carry on) | health |
//! | disabled | operator weight | false (as if failed: `on_down` applies) |

use crate::dataplane::engine::{Engine, EngineError};

/// The operator's state of one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// The weight the operator chose (starts as the engine's configured weight).
    pub weight: u32,
    pub state: AdminState,
}

impl ServerInputs {
    /// The weight the operator leaves the server, health aside: 0 while drained or
    /// disabled. (Active-active's announcer counts a server only while this is above 0.)
    pub fn operator_weight(&self) -> u32 {
        match self.state {
            AdminState::Enabled => self.weight,
            AdminState::Drained | AdminState::Disabled => 0,
        }
    }
}

/// What an operator asks of a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerOp {
    Weight(u32),
    Drain,
    Enable,
    Disable,
}

/// Every server's inputs, indexed like the engine's services and servers.
#[derive(Clone, Debug, Default)]
pub struct ServerControl {
    inputs: Vec<Vec<ServerInputs>>,
}

impl ServerControl {
    /// Starts from the engine's current servers (all healthy, enabled).
    pub fn new(engine: &Engine, services: usize) -> Self {
        let inputs = (0..services)
            .map(|svc| {
                engine
                    .servers(svc)
                    .iter()
                    .map(|s| ServerInputs { healthy: s.up, weight: s.weight, state: AdminState::Enabled })
                    .collect()
            })
            .collect();
        ServerControl { inputs }
    }

    pub fn inputs(&self, service: usize, server: usize) -> Option<ServerInputs> {
        self.inputs.get(service).and_then(|s| s.get(server)).copied()
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
            ServerOp::Weight(w) => i.weight = w,
            ServerOp::Drain => i.state = AdminState::Drained,
            ServerOp::Enable => i.state = AdminState::Enabled,
            ServerOp::Disable => i.state = AdminState::Disabled,
        }
        self.push(engine, service, server)
    }

    fn slot(&mut self, service: usize, server: usize) -> Option<&mut ServerInputs> {
        self.inputs.get_mut(service).and_then(|s| s.get_mut(server))
    }

    fn push(&self, engine: &mut Engine, service: usize, server: usize) -> Result<(), EngineError> {
        let i = self.inputs[service][server];
        let (weight, up) = match i.state {
            AdminState::Enabled => (i.weight, i.healthy),
            AdminState::Drained => (0, i.healthy),
            AdminState::Disabled => (i.weight, false),
        };
        engine.set_server_state(service, server, weight, up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Forwarding, OnDown, Protocol, SchedulerKind, Server, Service, Table};
    use crate::dataplane::engine::EngineConfig;

    fn engine() -> Engine {
        let server = |n: &str, a: &str| Server {
            name: n.into(),
            address: a.parse().expect("ip"),
            port: 80,
            weight: 5,
        };
        let svc = Service {
            name: "web".into(),
            vip: "10.0.0.99".parse().expect("ip"),
            port: 80,
            protocol: Protocol::Tcp,
            forwarding: Forwarding::Nat,
            scheduler: SchedulerKind::Wrr,
            persistence_s: 0,
            gateway_vip: None,
            on_down: OnDown::Keep,
            servers: vec![server("a", "10.0.1.1"), server("b", "10.0.1.2")],
            checks: vec![],
        };
        Engine::new(&EngineConfig {
            services: vec![svc],
            table: Table::default(),
            local_addr: "10.0.0.1".parse().expect("ip"),
            path_mtu: 1500,
            seed: 1,
        })
    }

    #[test]
    fn health_never_undoes_an_operator_and_enable_restores_the_weight() {
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
        c.apply(&mut e, 0, 1, ServerOp::Enable).expect("enable");
        assert_eq!((e.servers(0)[1].weight, e.servers(0)[1].up), (9, false), "weight back, health kept");
        c.set_health(&mut e, 0, 1, true);
        assert!(e.servers(0)[1].up);
        assert_eq!(e.servers(0)[0].weight, 5, "the other server untouched");
        assert!(c.apply(&mut e, 0, 2, ServerOp::Drain).is_err());
        assert!(c.apply(&mut e, 1, 0, ServerOp::Drain).is_err());
    }
}
