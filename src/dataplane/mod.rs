//! The data plane: a sans-IO packet engine (parse, schedule, rewrite), its connection table,
//! schedulers and sync codecs. No I/O lives here: the shells that move packets (TUN, AF_XDP,
//! AF_PACKET, rtnetlink) are in `crate::platform::linux::shell`, and `tests/dataplane_imports.rs`
//! fails if a file here imports the platform, the async runtime, `libc` or sockets.

pub mod conntrack;
pub mod decap;
pub mod engine;
pub mod fullsync;
pub mod sched;
pub mod settings;
pub mod sync;
#[doc(hidden)]
pub mod testkit;
pub mod wire;
