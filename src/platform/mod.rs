//! Side effects behind traits: sockets, VIPs, gratuitous ARP, reachability probes.

#[cfg(target_os = "linux")]
pub mod linux;
