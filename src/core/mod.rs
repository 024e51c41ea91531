//! The control core: pure, synchronous, deterministic state machines (STYLE.md).
//!
//! Nothing here imports tokio, reads a clock, or opens a file or socket: inputs arrive with
//! the `now` they happened at, and outputs are [`Action`](election::Action) values that the
//! driver carries out.
