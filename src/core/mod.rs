//! The control core: pure, synchronous, deterministic state machines (STYLE.md).
//!
//! Nothing here imports tokio, reads a clock, or opens a file or socket: inputs arrive with
//! the `now` they happened at, and outputs are [`election::Action`] values that the driver
//! carries out.
//!
//! * [`heartbeat`]: the authenticated heartbeat datagram and the replay window.
//! * [`arbitration`]: reachlist scores and the loss-adaptive dead interval.
//! * [`election`]: the primary/backup state machine.
//! * [`atm`]: one ATM's control core = election + heartbeat authentication + counters.
//! * [`announce`]: active-active mode's decision to announce or withdraw each VIP over BGP.

pub mod announce;
pub mod arbitration;
pub mod atm;
pub mod election;
pub mod heartbeat;
#[doc(hidden)]
pub mod testkit;

#[cfg(test)]
mod election_tests;
