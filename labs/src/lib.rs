//! # clusterlab: the namespace labs
//!
//! Runs a scenario of the simulator's format (`clustersim::scenario`) on real Linux network
//! namespaces: the topology is built with netlink ([`topology`], [`ns`]), the real
//! `clusterserverd` runs in the ATM namespaces and on the real servers (which it alone sets
//! up: [`nodes`]), nginx and the lab's stream server on the real
//! servers, the lab's own load generator on the clients ([`traffic`]); faults are real
//! (signals, links, nftables: [`faults`], [`rogue`]; failing real servers: [`health`]), and the figures are measured from the
//! kernel and the clients ([`measure`]) into the simulator's outcome shape ([`report`]).
//!
//! Lab safety (SPEC.md): everything lives in `csl-lab<pid>x<n>-*` namespaces, owned by a
//! [`lab::Lab`] guard that kills its processes (by PID) and deletes its namespaces on drop,
//! error, panic and Ctrl-C; stale namespaces of finished runs are removed at start.
#![allow(clippy::disallowed_methods)] // reason: a real lab waits on and timestamps with the wall clock

pub mod active_active;
pub mod bench;
pub mod bench_report;
pub mod config_sync;
pub mod delay;
pub mod failover;
pub mod family;
pub mod faults;
pub mod health;
pub mod lab;
pub mod lose_sync;
pub mod measure;
pub mod ndp;
pub mod nodes;
pub mod ns;
pub mod report;
pub mod rogue;
pub mod runner;
pub mod soak;
pub mod sshd;
pub mod topology;
pub mod traffic;
