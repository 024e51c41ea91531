//! Test builders, one place for every test: the crate's unit tests, the integration tests,
//! the simulator, the labs, the fuzz targets and the benchmarks (doc-hidden, not an API).
//!
//! * `Service::builder(name, vip, port)`, `.forwarding(..)`, `.scheduler(..)`,
//!   `.server(name, address, port, weight)`, `.check(..)`, ..., `.build()`: a `config::Service`;
//!   `ServiceSettings::builder(..)`: the same for the engine's settings (one builder,
//!   [`ServiceBuilder`]);
//! * [`server`], [`check`]: a real server and a health check with the config's defaults;
//! * [`election`]: an `ElectionConfig` for the core's tests.
//!
//! Why public and always compiled: the users are other crates (and `tests/`), which a
//! `cfg(test)` module would not reach and a cargo feature would have to be enabled in each;
//! the code is small and has no side effects. Each layer keeps its part beside its types
//! (`dataplane::testkit`, `config::testkit`, `core::testkit`), so that the data plane's tests
//! use theirs without the config (`tests/dataplane_imports.rs`) and no module's tests import
//! a module that imports it; this hub only re-exports, for the other crates.
//!
//! The goal: a new field in `Service`, `Server`, `Check` or `ElectionConfig` is added in one
//! test place, not in every test's literal.

pub use crate::config::testkit::check;
pub use crate::core::testkit::election;
pub use crate::dataplane::testkit::{ServiceBuilder, server};
