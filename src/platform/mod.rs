//! Side effects behind traits: sockets, VIPs, gratuitous ARP, reachability probes.
