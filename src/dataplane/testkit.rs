//! Test builders for the data plane's settings (doc-hidden; see [`crate::testkit`] for why
//! the builders are public and where the config's half lives).
//!
//! [`ServiceBuilder`] is the one builder of a service in tests: here it builds the engine's
//! [`ServiceSettings`] (this module knows nothing of the config, so the data plane's own tests
//! can use it: `tests/dataplane_imports.rs`); `crate::config::testkit` gives the same builder
//! health checks and a `config::Service` (`Service::builder`). A new field is added here once.

use std::net::IpAddr;

use super::settings::{Forwarding, OnDown, Protocol, SchedulerKind, Server, ServiceSettings};

/// A real server: `name` at `address:port` with `weight`.
pub fn server(name: &str, address: impl Into<IpAddr>, port: u16, weight: u32) -> Server {
    Server { name: name.into(), address: address.into(), port, weight }
}

/// A service under construction. Defaults: the config's (`protocol` tcp, `scheduler` wlc,
/// `persistence_s` 0, `on_down` keep, no gateway VIP), forwarding `nat` (the config has no
/// default there), no servers, no checks. `C` is what a health check is: nothing for the
/// engine's settings, `config::Check` for a config service.
#[derive(Clone, Debug)]
pub struct ServiceBuilder<C = ()> {
    pub(crate) settings: ServiceSettings,
    pub(crate) checks: Vec<C>,
}

impl ServiceSettings {
    /// A test service `name` on `vip:port`: see [`ServiceBuilder`].
    #[doc(hidden)]
    pub fn builder(name: &str, vip: impl Into<IpAddr>, port: u16) -> ServiceBuilder {
        ServiceBuilder::new(name, vip.into(), port)
    }
}

impl<C> ServiceBuilder<C> {
    pub(crate) fn new(name: &str, vip: IpAddr, port: u16) -> Self {
        let settings = ServiceSettings {
            name: name.into(),
            vip,
            port,
            protocol: Protocol::Tcp,
            forwarding: Forwarding::Nat,
            scheduler: SchedulerKind::Wlc,
            persistence_s: 0,
            gateway_vip: None,
            on_down: OnDown::Keep,
            servers: Vec::new(),
            has_checks: false,
        };
        ServiceBuilder { settings, checks: Vec::new() }
    }

    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.settings.protocol = protocol;
        self
    }

    pub fn forwarding(mut self, forwarding: Forwarding) -> Self {
        self.settings.forwarding = forwarding;
        self
    }

    pub fn scheduler(mut self, scheduler: SchedulerKind) -> Self {
        self.settings.scheduler = scheduler;
        self
    }

    pub fn persistence_s(mut self, seconds: u64) -> Self {
        self.settings.persistence_s = seconds;
        self
    }

    pub fn gateway_vip(mut self, gateway: impl Into<IpAddr>) -> Self {
        self.settings.gateway_vip = Some(gateway.into());
        self
    }

    pub fn on_down(mut self, on_down: OnDown) -> Self {
        self.settings.on_down = on_down;
        self
    }

    /// Adds a real server (see [`server`]).
    pub fn server(mut self, name: &str, address: impl Into<IpAddr>, port: u16, weight: u32) -> Self {
        self.settings.servers.push(server(name, address, port, weight));
        self
    }

    /// Adds real servers.
    pub fn servers(mut self, servers: impl IntoIterator<Item = Server>) -> Self {
        self.settings.servers.extend(servers);
        self
    }
}

impl ServiceBuilder {
    /// The settings claim health checks (a server added by a reload starts down).
    pub fn has_checks(mut self, has_checks: bool) -> Self {
        self.settings.has_checks = has_checks;
        self
    }

    pub fn build(self) -> ServiceSettings {
        self.settings
    }
}
