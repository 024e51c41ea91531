//! Test builders for config types (doc-hidden; see [`crate::testkit`] for why they are
//! public): `Service::builder` (the data plane's [`ServiceBuilder`] with health checks) and
//! [`check`], both with the defaults the config decoder fills in.

use std::net::IpAddr;

use super::sections::{
    DEFAULT_CHECK_FALL, DEFAULT_CHECK_INTERVAL_MS, DEFAULT_CHECK_RISE, DEFAULT_CHECK_TIMEOUT_MS,
};
use super::sections::{DEFAULT_HTTP_PATH, DEFAULT_HTTP_STATUS};
use super::types::{Check, CheckKind, Service};
pub use crate::dataplane::testkit::{ServiceBuilder, server};

impl Service {
    /// A test service `name` on `vip:port`: see [`ServiceBuilder`] for the defaults.
    #[doc(hidden)]
    pub fn builder(name: &str, vip: impl Into<IpAddr>, port: u16) -> ServiceBuilder<Check> {
        ServiceBuilder::new(name, vip.into(), port)
    }
}

impl ServiceBuilder<Check> {
    /// Adds a health check (see [`check`]).
    pub fn check(mut self, check: Check) -> Self {
        self.checks.push(check);
        self
    }

    /// Adds health checks.
    pub fn checks(mut self, checks: impl IntoIterator<Item = Check>) -> Self {
        self.checks.extend(checks);
        self
    }

    pub fn build(self) -> Service {
        let s = self.settings;
        Service {
            name: s.name,
            vip: s.vip,
            port: s.port,
            protocol: s.protocol,
            forwarding: s.forwarding,
            scheduler: s.scheduler,
            persistence_s: s.persistence_s,
            gateway_vip: s.gateway_vip,
            on_down: s.on_down,
            servers: s.servers,
            checks: self.checks,
        }
    }
}

/// A health check of `kind` as the config decodes one with no other key: every 2000 ms,
/// timeout 1000 ms, rise 2, fall 3; http(s) asks for `/` and expects 200. Change fields with
/// struct update: `Check { rise: 1, ..check(CheckKind::Tcp) }`.
pub fn check(kind: CheckKind) -> Check {
    let http = matches!(kind, CheckKind::Http | CheckKind::Https);
    Check {
        kind,
        path: http.then(|| DEFAULT_HTTP_PATH.to_string()),
        expect_status: http.then_some(DEFAULT_HTTP_STATUS),
        command: Vec::new(),
        port: None,
        interval_ms: DEFAULT_CHECK_INTERVAL_MS,
        timeout_ms: DEFAULT_CHECK_TIMEOUT_MS,
        rise: DEFAULT_CHECK_RISE,
        fall: DEFAULT_CHECK_FALL,
    }
}
