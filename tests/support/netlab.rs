//! The namespace lab the daemon tests build their topologies in: `csl-` namespaces joined by
//! veth pairs to bridges in a switch namespace, a scratch directory, and the helper processes
//! started in them, all removed by [`NetLab`]'s drop, even when the test panics.
//!
//! Why one guard for every test: lab safety (SPEC.md) is the same rule everywhere (every host
//! is a namespace the test made, veth ends are created directly inside lab namespaces so none
//! is ever in the root namespace, processes are killed by PID), and a copy per test drifted
//! in small ways (the order of clean-up, stale namespaces of killed runs) that are easy to
//! get wrong. Each test keeps its own topology; only the mechanics live here.
#![allow(clippy::disallowed_methods)] // reason: lab plumbing of real-network tests, no simulator

use std::path::PathBuf;
use std::process::{Child, Command};

use super::{in_ns, run};

/// Namespaces `PREFIX-HOST`, a directory, and processes, removed on drop (processes first:
/// they run inside the namespaces). A test's own daemons go in a field declared *before* its
/// `NetLab`, so that they are killed first too (fields drop in declaration order).
#[derive(Debug)]
pub struct NetLab {
    /// `FAMILY<pid>TAG`, e.g. `csl-aa1234`.
    pub prefix: String,
    /// Scratch directory (configs, secrets, logs), emptied at start and removed on drop.
    pub dir: PathBuf,
    namespaces: Vec<String>,
    /// Helper processes (servers, BIRD, chromedriver, ...), killed by PID on drop.
    pub others: Vec<Child>,
}

impl NetLab {
    /// A lab of namespaces `FAMILY<pid>TAG-*`; first removes the namespaces of `FAMILY` that a
    /// killed earlier run left (their pid is gone), never another live run's.
    pub fn new(family: &str, tag: &str) -> NetLab {
        super::remove_stale_namespaces(family);
        let prefix = format!("{family}{}{tag}", std::process::id());
        let dir = std::env::temp_dir().join(&prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("lab directory");
        NetLab { prefix, dir, namespaces: Vec::new(), others: Vec::new() }
    }

    /// The namespace name of `host` (whether or not it exists yet).
    pub fn name(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// Creates the namespace of `host` with `lo` up; returns its name.
    pub fn add_ns(&mut self, host: &str) -> String {
        let ns = self.name(host);
        run(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        in_ns(&ns, &["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Makes namespace `ns` a router (ATMs, the upstream router): IPv4 forwarding on and
    /// reverse-path filtering off (VIP traffic arrives on interfaces that do not route back
    /// to the client).
    pub fn forwarding(&self, ns: &str) {
        for kv in
            ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"]
        {
            in_ns(ns, &["sysctl", "-qw", kv]);
        }
    }

    /// A bridge `br`, up, in namespace `sw` (the lab's switch).
    pub fn bridge(&self, sw: &str, br: &str) {
        in_ns(sw, &["ip", "link", "add", br, "type", "bridge"]);
        in_ns(sw, &["ip", "link", "set", br, "up"]);
    }

    /// A veth `dev` in `ns` with address `cidr`, whose peer `port` joins `bridge` in `sw`.
    pub fn attach(&self, ns: &str, dev: &str, cidr: &str, sw: &str, port: &str, bridge: &str) {
        self.link(ns, dev, sw, port, bridge);
        in_ns(ns, &["ip", "addr", "add", cidr, "dev", dev]);
        in_ns(ns, &["ip", "link", "set", dev, "up"]);
    }

    /// As [`NetLab::attach`], with the subnet's broadcast address set (`brd +`): a listener
    /// for the primary's broadcast heartbeats needs it (`ip addr add` leaves it unset).
    pub fn attach_broadcast(&self, ns: &str, dev: &str, cidr: &str, sw: &str, port: &str, bridge: &str) {
        self.link(ns, dev, sw, port, bridge);
        in_ns(ns, &["ip", "addr", "add", cidr, "brd", "+", "dev", dev]);
        in_ns(ns, &["ip", "link", "set", dev, "up"]);
    }

    /// As [`NetLab::attach`] with only an IPv6 address, added without duplicate-address
    /// detection.
    pub fn attach6(&self, ns: &str, dev: &str, cidr: &str, sw: &str, port: &str, bridge: &str) {
        self.link(ns, dev, sw, port, bridge);
        super::ipv6::addr6(ns, cidr, dev);
        in_ns(ns, &["ip", "link", "set", dev, "up"]);
    }

    /// The veth pair, created with each end directly in its namespace.
    fn link(&self, ns: &str, dev: &str, sw: &str, port: &str, bridge: &str) {
        run(&["ip", "link", "add", dev, "netns", ns, "type", "veth", "peer", "name", port, "netns", sw]);
        in_ns(sw, &["ip", "link", "set", port, "master", bridge]);
        in_ns(sw, &["ip", "link", "set", port, "up"]);
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for c in &mut self.others {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
