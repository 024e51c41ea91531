//! The Linux platform: the real [`crate::platform::Platform`] of an ATM ([`atm`]), ARP for
//! the VIPs from user space ([`arp`]), BIRD 2 as the BGP speaker of active-active mode ([`bird`]), health checkers ([`checks`]), ICMP probes ([`icmp`]), cluster-node set-up ([`node`]), real-time scheduling of the heartbeat thread ([`realtime`]), the host's addresses
//! ([`host`]), the `bpf(2)` system call and an eBPF encoder ([`bpf`]), and the few system calls that need `unsafe` ([`netsys`], every block with a
//! `// SAFETY:` comment).

pub mod arp;
pub mod atm;
pub mod bird;
pub mod bpf;
pub mod checks;
pub mod clock;
pub mod host;
pub mod icmp;
pub mod netsys;
pub mod node;
pub mod realtime;
pub mod shell;
