//! # clustersim: the deterministic simulator
//!
//! Runs the real control code of clusterserver (the [`clusterserver::driver`] and the
//! [`clusterserver::core`] state machines) on several simulated hosts under turmoil, on a
//! simulated LAN with ARP caches, and injects a scenario's faults. A run is a pure function
//! of (scenario, seed): every random choice comes from the seed, every `select!` is biased,
//! no map iterates in a random order, and nothing reads the wall clock.
//!
//! * [`scenario`]: the scenario file format shared with the labs.
//! * [`world`], [`net`], [`kernel`]: the simulated LAN, sockets with loss, frozen processes,
//!   and what each host's kernel does (ARP, echo); [`ndp`] and [`nud`]: Neighbor Discovery
//!   for IPv6 VIPs and Linux's neighbour cache.
//! * [`atm`], [`client`], [`rogue`]: the hosts' software.
//! * [`runner`]: one run with its invariant checks; [`sweep`]: many seeds on all cores.
//! * [`ecmp`]: active-active mode, stepped: an ECMP router over the announcing ATMs.
//! * [`failover_check`]: service failover read back from the trace (never on two ATMs).

pub mod atm;
pub mod chart;
pub mod checks;
pub mod client;
pub mod dataplane;
pub mod ecmp;
pub mod failover_check;
pub mod flows;
pub mod kernel;
pub mod ndp;
pub mod net;
pub mod nud;
pub mod rng;
pub mod rogue;
pub mod runner;
pub mod scenario;
pub mod sweep;
pub mod topology;
pub mod world;
