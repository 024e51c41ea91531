//! BPF without a toolchain: the `bpf(2)` system call ([`sys`]) and an instruction encoder
//! ([`insn`]).
//!
//! ## Why no clang, no aya-ebpf, no prebuilt object
//!
//! The programs this daemon loads are small and fixed in shape: the AF_XDP backend's XDP
//! classifier is about a hundred instructions (parse Ethernet, one optional VLAN tag, IPv4 or
//! IPv6, look the destination and the source up in a hash map, redirect or pass), and a TUN
//! steering filter is a few dozen. Generating them in Rust as instruction sequences keeps
//! the build what it is everywhere else: `cargo build` on a fresh machine, no LLVM with a BPF
//! target, no nightly `-Z build-std` for aya-ebpf, no object file checked in that nobody can
//! review or rebuild. The cost is writing assembly by hand; the encoder's unit tests pin each
//! encoding against what llvm-objdump prints, and the kernel's verifier checks every program
//! at load time (its log is returned in [`sys::LoadError`]).
//!
//! Contract: every function here is a thin, checked wrapper; descriptors are [`OwnedFd`]s
//! (closed on drop); nothing is pinned in bpffs, so nothing outlives the process.
//!
//! [`OwnedFd`]: std::os::fd::OwnedFd

pub mod insn;
pub mod sys;
