//! # clusterserver
//!
//! A high-availability layer-4 load balancer: primary/backup traffic managers (ATMs) that
//! elect a primary over authenticated UDP heartbeats, move virtual IPs with gratuitous ARP,
//! and forward to real servers by NAT, direct routing or IP-in-IP from a user-space data
//! plane on TUN/TAP.
//!
//! ## Architecture: three layers, one direction
//!
//! ```text
//!   core/, dataplane/ (sans-IO)   <-   driver (async glue)   <-   platform/ (side effects)
//! ```
//!
//! * [`core`] holds the state machines (heartbeat codec, election, the ATM core). They take
//!   `(now, input)` and emit actions; they never read a clock or touch a socket, so the
//!   simulator (`clustersim`) runs exactly this code under a virtual clock and network.
//! * [`dataplane`] is the packet engine: `process(now, rx, tx) -> Verdict`, allocation-free,
//!   with its own settings types ([`dataplane::settings`], built from the config) and no I/O:
//!   the shells that move packets (TUN, AF_XDP) are in `platform::linux::shell`
//!   (`tests/dataplane_imports.rs` holds the boundary).
//! * [`auth`] is the HMAC and replay window that heartbeats and connection sync share.
//! * [`driver`] turns actions into platform calls and timeouts into sleeps; it is generic
//!   over [`platform::Platform`], implemented for Linux here and for turmoil in the simulator.
//! * [`health`] is the sans-IO health-check state machine (rise/fall, flap damping); the
//!   daemon runs its checks with `platform::linux::checks`, the simulator scripts them.
//! * [`failover`] is the sans-IO service-group failover state machine (seed 004's clusterd): which
//!   service groups this ATM runs, takeover, standby, hand-back with mirroring.
//! * [`overrides`] keeps the operators' drain, disable and weight beside the engine, and
//!   their state file's format (daemon and simulator run the same code).
//! * [`config`] parses and validates the operator's JSON5 file into typed structs.
//!
//! Time is [`time::Instant`], a number; randomness comes from a seed passed in.
//!
//! ## Words
//!
//! An *ATM* is a traffic manager (its control core: [`core::atm::AtmCore`]); a *node* is a
//! real server ([`node`] sets one up); a *service* is a VIP service ([`config::Service`]); a
//! *service group* is seed 004's set of S/K scripts and mirror sets that fails over between
//! ATMs ([`failover`]). `docs/GLOSSARY.md` has the rest.

#![deny(unsafe_code)]

#[cfg(target_os = "linux")]
pub mod admin;
pub mod auth;
#[cfg(target_os = "linux")]
pub mod cmc;
pub mod config;
pub mod core;
#[cfg(target_os = "linux")]
pub mod daemon;
pub mod dataplane;
pub mod driver;
pub mod failover;
pub mod health;
pub mod node;
pub mod overrides;
pub mod platform;
pub mod synctool;
#[doc(hidden)]
pub mod testkit;
pub mod time;
