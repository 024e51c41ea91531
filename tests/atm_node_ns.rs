//! Hosts that are both ATM and real server (seed 002: "the only way that you can have a
//! system act as both"), with the real daemon in namespaces, by direct routing and by
//! IP-in-IP (user-space decapsulation on every server, the ATMs included):
//!
//! ```text
//!   client 10.89.0.100 --+-- [sw: bridge br0] --+-- atm1 10.89.0.1  (ATM and server srv1)
//!                                               +-- atm2 10.89.0.2  (ATM and server srv2)
//!                                               +-- node 10.89.0.51 (server srv3)
//! ```
//!
//! VIP 10.89.0.99:8080, `rr` over srv1..srv3; each server answers its own name. Checked:
//! the primary never serves (its VIP is off `lo`, its engine gives itself weight 0) while
//! the backup does (VIP on `lo`, label `lo:csd<cluster id>`); after a graceful handover and a restart
//! the roles swap and so do the servers used; a service on a second VIP added by a live
//! reload is set up in place the same way (on the backup's and the node's `lo`, off the
//! primary's); after SIGTERM every host is clean.
//!
//! Lab safety: namespaces `csl-an<pid>-*`, veth ends created directly inside them, a drop
//! guard kills the processes this test started (by PID) and deletes the namespaces.
//! Skips loudly without root.
#![allow(clippy::disallowed_methods)] // reason: a real-network test waits on the wall clock

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::daemon::{LoggedDaemons, spawn_logged};
use support::netlab::NetLab;
use support::traffic::NAME_RESPONDER;
use support::wait::wait_until;
use support::{ns_output, run};

const VIP: &str = "10.89.0.99";
const VIP2: &str = "10.89.0.98";

fn can_run() -> bool {
    let ok = support::is_root()
        && Path::new("/dev/net/tun").exists()
        && Command::new("python3").arg("-V").output().is_ok_and(|o| o.status.success());
    if !ok {
        println!("SKIPPED: needs root, /dev/net/tun and python3 (the servers' responder)");
        eprintln!("SKIPPED: needs root, /dev/net/tun and python3 (the servers' responder)");
    }
    ok
}

/// The lab: its daemons by host (declared first: killed before the namespaces go) and the
/// namespaces, files and helper processes ([`NetLab`]).
struct Lab {
    daemons: LoggedDaemons,
    net: NetLab,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let net = NetLab::new("csl-an", &format!("-{tag}"));
        std::fs::create_dir_all(net.dir.join("run")).expect("dir");
        Lab { daemons: LoggedDaemons::default(), net }
    }

    fn ns(&self, host: &str) -> String {
        self.net.name(host)
    }

    /// Host `host` (forwarding, as the ATMs need) on the switch's `br0` with `addr/24`.
    fn add_host(&mut self, host: &str, addr: &str) {
        let ns = self.net.add_ns(host);
        self.net.forwarding(&ns);
        self.net.attach(&ns, "eth0", &format!("{addr}/24"), &self.ns("sw"), &format!("p-{host}"), "br0");
    }

    fn responder(&mut self, host: &str, name: &str) {
        let c = Command::new("ip")
            .args(["netns", "exec", &self.ns(host), "timeout", "120", "python3", "-c", NAME_RESPONDER, name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("responder");
        self.net.others.push(c);
    }

    fn log(&self, host: &str) -> PathBuf {
        self.net.dir.join(format!("{host}.log"))
    }

    fn text(&self, host: &str) -> String {
        std::fs::read_to_string(self.log(host)).unwrap_or_default()
    }

    fn start(&mut self, host: &str) {
        let (config, run_dir) = (self.net.dir.join("cfg.json5"), self.net.dir.join("run"));
        let c = spawn_logged(&self.ns(host), &config, &run_dir, &self.log(host));
        self.daemons.insert(host, c);
    }

    fn term(&mut self, host: &str) {
        let mut c = self.daemons.take(host).expect("running");
        run(&["kill", "-TERM", &c.id().to_string()]);
        let mut st = None;
        wait_until(&format!("{host} to exit"), Duration::from_secs(10), || {
            st = c.try_wait().expect("wait");
            st.is_some()
        });
        assert!(st.is_some_and(|s| s.success()), "{host} exit {st:?}:\n{}", self.text(host));
    }

    fn vip_on_lo(&self, host: &str) -> bool {
        self.on_lo(host, VIP)
    }

    fn on_lo(&self, host: &str, vip: &str) -> bool {
        ns_output(&self.ns(host), &["ip", "-o", "-4", "addr", "show", "dev", "lo"])
            .contains(&format!(" {vip}/32 "))
    }

    /// `n` new connections through the VIP from the client: the names that answered.
    fn answered(&self, n: usize) -> (BTreeSet<String>, usize) {
        let addr: SocketAddr = format!("{VIP}:8080").parse().expect("addr");
        support::traffic::answered(&self.ns("client"), addr, n)
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn atms_that_are_also_dr_servers_serve_only_while_backup() {
    if can_run() {
        both_roles("dr");
    }
}

#[test]
fn atms_that_are_also_tunnel_servers_serve_only_while_backup() {
    if can_run() {
        both_roles("tunnel");
    }
}

fn both_roles(forwarding: &str) {
    let mut lab = Lab::new(forwarding);
    let sw = lab.net.add_ns("sw");
    lab.net.bridge(&sw, "br0");
    for (h, a) in
        [("client", "10.89.0.100"), ("atm1", "10.89.0.1"), ("atm2", "10.89.0.2"), ("node", "10.89.0.51")]
    {
        lab.add_host(h, a);
    }
    let secret = lab.net.dir.join("secret");
    std::fs::write(&secret, "an-secret").expect("secret");
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let servers = "servers: [ { name: 'srv1', address: '10.89.0.1', port: 8080 }, { name: 'srv2', address: '10.89.0.2', port: 8080 }, { name: 'srv3', address: '10.89.0.51', port: 8080 } ]";
    let cfg = |second: bool| {
        let web2 = match second {
            true => format!(
                ", {{ name: 'web2', vip: '{VIP2}', port: 8080, forwarding: '{forwarding}', scheduler: 'rr', {servers} }}"
            ),
            false => String::new(),
        };
        format!(
            "{{ cluster: {{ name: 'an', id: 89, secret_file: '{}' }},\n  atms: [ {{ name: 'atm1', address: '10.89.0.1', interface: 'eth0' }}, {{ name: 'atm2', address: '10.89.0.2', interface: 'eth0' }} ],\n  timers: {{ heartbeat_ms: 100, dead_after: 3 }},\n  services: [ {{ name: 'web', vip: '{VIP}', port: 8080, forwarding: '{forwarding}', scheduler: 'rr',\n    {servers} }}{web2} ] }}",
            secret.display()
        )
    };
    std::fs::write(lab.net.dir.join("cfg.json5"), cfg(false)).expect("config");
    for (h, n) in [("atm1", "srv1"), ("atm2", "srv2"), ("node", "srv3")] {
        lab.responder(h, n);
    }
    lab.start("node");
    wait_until("node ready", Duration::from_secs(5), || lab.text("node").contains(" ready node=srv3"));
    lab.start("atm1");
    wait_until("atm1 ready", Duration::from_secs(10), || lab.text("atm1").contains(" ready node=atm1"));
    lab.start("atm2");
    wait_until("atm1 primary", Duration::from_secs(10), || lab.text("atm1").contains("role=primary"));
    wait_until("atm2 ready", Duration::from_secs(10), || lab.text("atm2").contains(" ready node=atm2"));
    assert!(lab.text("atm1").contains("this ATM is also a real server"), "{}", lab.text("atm1"));
    // The primary's VIP is off lo, the backup's is on it.
    wait_until("VIP off the primary's lo", Duration::from_secs(5), || !lab.vip_on_lo("atm1"));
    assert!(lab.vip_on_lo("atm2") && lab.vip_on_lo("node"));

    let (names, failed) = lab.answered(30);
    println!("{forwarding}, atm1 primary: answered by {names:?}, {failed} failed");
    assert_eq!(failed, 0);
    assert_eq!(names, set(&["srv2", "srv3"]), "the primary must not serve, the backup must");

    // Graceful handover to atm2; atm1 leaves its host clean, then returns as a backup.
    lab.term("atm1");
    assert!(!lab.vip_on_lo("atm1"));
    assert!(ns_output(&lab.ns("atm1"), &["ip", "-o", "link"]).lines().all(|l| !l.contains(" csd89")));
    wait_until("atm2 primary", Duration::from_secs(10), || lab.text("atm2").contains("role=primary"));
    wait_until("VIP off atm2's lo", Duration::from_secs(5), || !lab.vip_on_lo("atm2"));
    lab.start("atm1");
    wait_until("atm1 back", Duration::from_secs(10), || {
        lab.text("atm1").matches(" ready node=atm1").count() == 2
    });
    wait_until("VIP on atm1's lo", Duration::from_secs(5), || lab.vip_on_lo("atm1"));
    let (names, failed) = lab.answered(30);
    println!("{forwarding}, atm2 primary: answered by {names:?}, {failed} failed");
    assert_eq!(failed, 0);
    assert_eq!(names, set(&["srv1", "srv3"]));

    // A service on a second VIP added by a live reload on every host: the backup (atm1) and
    // the node put the new VIP on `lo` in place, the primary (atm2) takes it and keeps it off
    // its own `lo`; nobody restarts, no role moves, and the new VIP is served by the backup
    // and the node only.
    std::fs::write(lab.net.dir.join("cfg.json5"), cfg(true)).expect("config");
    let roles =
        |lab: &Lab| (lab.text("atm1").matches("role=").count(), lab.text("atm2").matches("role=").count());
    let before = roles(&lab);
    for h in ["node", "atm1", "atm2"] {
        let n = lab.text(h).matches("reload applied live").count();
        let pid = lab.daemons.get(h).id().to_string();
        run(&["kill", "-HUP", &pid]);
        wait_until(&format!("{h} reloads live"), Duration::from_secs(10), || {
            lab.text(h).matches("reload applied live").count() > n
        });
    }
    assert!(lab.on_lo("atm1", VIP2) && lab.on_lo("node", VIP2), "the new VIP is on the servers' lo");
    assert!(!lab.on_lo("atm2", VIP2), "the primary holds the new VIP: not on its lo");
    assert_eq!(lab.text("atm1").matches(" ready node=atm1").count(), 2, "atm1 restarted for the reload");
    assert_eq!(roles(&lab), before, "a role moved:\n{}", lab.text("atm2"));
    let addr2: SocketAddr = format!("{VIP2}:8080").parse().expect("addr");
    let (names, failed) = support::traffic::answered(&lab.ns("client"), addr2, 30);
    println!("{forwarding}, a VIP added live: answered by {names:?}, {failed} failed");
    assert_eq!((names, failed), (set(&["srv1", "srv3"]), 0));

    for h in ["atm1", "atm2", "node"] {
        lab.term(h);
        assert!(!lab.vip_on_lo(h) && !lab.on_lo(h, VIP2), "{h} left a VIP on lo");
        let v = ns_output(&lab.ns(h), &["cat", "/proc/sys/net/ipv4/conf/all/arp_ignore"]);
        assert_eq!(v.trim(), "0", "{h}: arp_ignore restored");
        let links = ns_output(&lab.ns(h), &["ip", "-o", "link"]);
        assert!(!links.contains(": csn89") && !links.contains(": csd89"), "{h} left a TUN:\n{links}");
        let rules = ns_output(&lab.ns(h), &["ip", "rule"]);
        assert_eq!(rules.lines().count(), 3, "{h} left policy rules:\n{rules}");
    }
    assert_eq!(
        std::fs::read_dir(lab.net.dir.join("run")).map(|d| d.count()).unwrap_or(99),
        0,
        "state files left"
    );
}
