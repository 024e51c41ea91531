//! The daemon on a cluster node, in a network namespace: set-up per forwarding method (VIPs
//! on `lo` with the label `lo:csd<cluster id>`, ARP-hiding sysctls, the user-space decapsulator's TUN),
//! crash safety (SIGKILL, then a restart clears and sets up again, nothing doubled), a
//! reload applied in place (a tunnel service removed, then added again; a refused bad one), and a SIGTERM that leaves the node as it
//! found it (sysctls restored to the values the test set before, not to defaults).
//!
//! Lab safety (SPEC.md): namespaces `csl-nd<pid>-*` only, the veth pair is created inside
//! the namespace, sysctls are changed only inside it; a drop guard kills the daemon by PID
//! and deletes the namespace even on panic. Skips loudly without root.
#![allow(clippy::disallowed_methods)] // reason: a real-process test waits on the wall clock

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NODE: &str = "10.88.0.51";
const DR_VIP: &str = "10.88.0.99";
const TUN_VIP: &str = "10.88.0.98";

fn can_run() -> bool {
    let ok = is_root() && Path::new("/dev/net/tun").exists() && Command::new("ip").arg("-V").output().is_ok();
    if !ok {
        println!("SKIPPED: node set-up tests need root, /dev/net/tun and iproute2");
        eprintln!("SKIPPED: node set-up tests need root, /dev/net/tun and iproute2");
    }
    ok
}

use support::{is_root, ns_output, run};

fn sysctl(ns: &str, key: &str) -> String {
    ns_output(ns, &["cat", &format!("/proc/sys/net/ipv4/conf/{key}")]).trim().to_string()
}

fn remove_stale() {
    support::remove_stale_namespaces("csl-nd");
}

struct Lab {
    ns: String,
    dir: PathBuf,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Lab {
    fn new(tag: &str) -> Lab {
        remove_stale();
        let ns = format!("csl-nd{}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(&ns);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("run")).expect("temp dir");
        run(&["ip", "netns", "add", &ns]);
        let lab = Lab { ns, dir, child: None, log: Arc::new(Mutex::new(Vec::new())) };
        let ns = lab.ns.as_str();
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        run(&["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"]);
        run(&["ip", "-n", ns, "addr", "add", &format!("{NODE}/24"), "dev", "eth0"]);
        run(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
        run(&["ip", "-n", ns, "link", "set", "peer0", "up"]);
        let secret = lab.dir.join("secret");
        std::fs::write(&secret, "s").expect("secret");
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        lab
    }

    fn config(&self, tunnel: bool) -> PathBuf {
        let tun = if tunnel {
            format!(
                ", {{ name: 'tun', vip: '{TUN_VIP}', port: 80, forwarding: 'tunnel', servers: [ {{ name: 'n1', address: '{NODE}' }} ] }}"
            )
        } else {
            String::new()
        };
        let text = format!(
            "{{ cluster: {{ name: 't', id: 7, secret_file: '{}' }},\n  atms: [ {{ name: 'atm1', address: '10.88.0.1', interface: 'eth0' }} ],\n  services: [ {{ name: 'web', vip: '{DR_VIP}', port: 80, forwarding: 'dr', servers: [ {{ name: 'n1', address: '{NODE}' }}, {{ name: 'n2', address: '10.88.0.52' }} ] }}{tun} ] }}",
            self.dir.join("secret").display()
        );
        let p = self.dir.join("node.json5");
        std::fs::write(&p, text).expect("config");
        p
    }

    fn start(&mut self) {
        self.start_with(&[]);
    }

    /// Starts the daemon behind `wrapper` (e.g. `setpriv ... --`).
    fn start_with(&mut self, wrapper: &[&str]) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(wrapper)
            .args([env!("CARGO_BIN_EXE_clusterserverd"), "--config"])
            .arg(self.dir.join("node.json5"))
            .env("RUST_LOG", "info")
            .env("CLUSTERSERVERD_RUN_DIR", self.dir.join("run"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn daemon");
        let stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&self.log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[node] {line}");
                sink.lock().expect("log").push(line);
            }
        });
        self.child = Some(child);
    }

    fn count(&self, needle: &str) -> usize {
        self.log.lock().expect("log").iter().filter(|l| l.contains(needle)).count()
    }

    fn wait_log(&mut self, needle: &str, n: usize) {
        let start = Instant::now();
        while self.count(needle) < n {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("daemon exited ({st}) before logging {needle:?} x{n}");
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no {needle:?} x{n} within 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&mut self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        run(&["kill", sig, &pid]);
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let c = self.child.as_mut().expect("running");
        let start = Instant::now();
        loop {
            if let Some(st) = c.try_wait().expect("wait") {
                self.child = None;
                return st;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "daemon did not exit within 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Lines of `ip -o addr show dev lo` that hold `vip`.
    fn lo_lines(&self, vip: &str) -> Vec<String> {
        ns_output(&self.ns, &["ip", "-o", "-4", "addr", "show", "dev", "lo"])
            .lines()
            .filter(|l| l.contains(&format!(" {vip}/32 ")))
            .map(str::to_string)
            .collect()
    }

    fn has_link(&self, name: &str) -> bool {
        ns_output(&self.ns, &["ip", "-o", "link", "show"]).contains(&format!(": {name}:"))
    }

    fn state_files(&self) -> usize {
        std::fs::read_dir(self.dir.join("run")).map(|d| d.count()).unwrap_or(0)
    }
}

#[test]
fn node_set_up_survives_sigkill_reloads_and_is_undone_on_sigterm() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::new("a");
    let ns = lab.ns.clone();
    // Values the node must restore exactly (not defaults): all/arp_announce starts at 1.
    run(&["ip", "netns", "exec", &ns, "sysctl", "-qw", "net.ipv4.conf.all.arp_announce=1"]);
    // Strict reverse-path filtering, which a tunnel node must turn off on `all`.
    run(&["ip", "netns", "exec", &ns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1"]);
    let before: Vec<(&str, String)> =
        ["all/arp_ignore", "all/arp_announce", "eth0/arp_ignore", "eth0/arp_announce", "all/rp_filter"]
            .into_iter()
            .map(|k| (k, sysctl(&ns, k)))
            .collect();
    assert_eq!(before[1].1, "1");
    lab.config(true);
    lab.start();
    lab.wait_log(" ready ", 1);
    assert_eq!(lab.count(" ready node=n1 role=node "), 1, "the ready line names the node and its role");
    let dr = lab.lo_lines(DR_VIP);
    assert_eq!(dr.len(), 1, "{dr:?}");
    assert!(dr[0].contains("lo:csd"), "VIP carries our label: {dr:?}");
    assert_eq!(lab.lo_lines(TUN_VIP).len(), 1);
    for k in ["all/arp_ignore", "eth0/arp_ignore"] {
        assert_eq!(sysctl(&ns, k), "1", "{k}");
    }
    for k in ["all/arp_announce", "eth0/arp_announce"] {
        assert_eq!(sysctl(&ns, k), "2", "{k}");
    }
    assert!(lab.has_link("csn7"), "user-space decapsulator TUN");
    assert_eq!(sysctl(&ns, "all/rp_filter"), "0", "all/rp_filter off for tunnel");
    assert_eq!(lab.state_files(), 1);

    // SIGKILL: everything stays; a restart clears it and sets up again, nothing doubled.
    lab.signal("-KILL");
    lab.wait_exit();
    assert_eq!(lab.lo_lines(DR_VIP).len(), 1, "the killed daemon's VIP is still there");
    lab.start();
    lab.wait_log(" ready ", 2);
    assert!(lab.count("cleared the node set-up a previous run left") >= 1);
    assert_eq!(lab.lo_lines(DR_VIP).len(), 1);
    assert!(lab.has_link("csn7"));

    // A bad reload is refused and changes nothing; a good one re-plans (no tunnel any more).
    std::fs::write(lab.dir.join("node.json5"), "{ cluster: { name: 't' ").expect("bad config");
    lab.signal("-HUP");
    lab.wait_log("reload refused", 1);
    assert_eq!(lab.lo_lines(TUN_VIP).len(), 1);
    // Applied in place: the tunnel service's VIP and decapsulator go, the DR VIP stays on
    // `lo` throughout (no restart: still two `ready` lines).
    lab.config(false);
    lab.signal("-HUP");
    lab.wait_log("reload applied live", 1);
    assert_eq!(lab.lo_lines(TUN_VIP).len(), 0, "tunnel VIP gone after the reload");
    assert_eq!(lab.lo_lines(DR_VIP).len(), 1);
    assert!(!lab.has_link("csn7"), "no decapsulator without tunnel services");
    assert_eq!(sysctl(&ns, "all/rp_filter"), "1", "no tunnel, strict again");
    assert_eq!(lab.count(" ready "), 2, "the reload restarted the node set-up");
    // And back: the tunnel service added live gets its VIP and decapsulator again.
    lab.config(true);
    lab.signal("-HUP");
    lab.wait_log("reload applied live", 2);
    assert_eq!(lab.lo_lines(TUN_VIP).len(), 1, "tunnel VIP added by the reload");
    assert_eq!(lab.lo_lines(DR_VIP).len(), 1);
    assert!(lab.has_link("csn7"), "decapsulator started by the reload");
    assert_eq!(sysctl(&ns, "all/rp_filter"), "0", "tunnel again: all/rp_filter off");
    assert_eq!(lab.count(" ready "), 2, "the reload restarted the node set-up");
    assert!(lab.count("vips_added=10.88.0.98") >= 1, "the log names the VIP added");

    // SIGTERM: exit 0 and the node is as the test left it before the first start.
    lab.signal("-TERM");
    assert!(lab.wait_exit().success());
    assert!(lab.lo_lines(DR_VIP).is_empty() && lab.lo_lines(TUN_VIP).is_empty());
    for (k, v) in &before {
        assert_eq!(&sysctl(&ns, k), v, "{k} restored");
    }
    assert!(!lab.has_link("csn7"));
    assert_eq!(lab.state_files(), 0, "state file removed");
}

#[test]
fn nat_node_warns_when_it_does_not_route_through_the_gateway_vip() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::new("nat");
    let text = format!(
        "{{ cluster: {{ name: 't', id: 8, secret_file: '{}' }},\n  atms: [ {{ name: 'atm1', address: '10.88.0.1', interface: 'eth0' }} ],\n  services: [ {{ name: 'natweb', vip: '10.88.5.99', port: 80, forwarding: 'nat', gateway_vip: '10.88.0.254', servers: [ {{ name: 'n1', address: '{NODE}' }} ] }} ] }}",
        lab.dir.join("secret").display()
    );
    std::fs::write(lab.dir.join("node.json5"), text).expect("config");
    // Default route through another router: the check must name the service.
    run(&["ip", "-n", &lab.ns, "route", "add", "default", "via", "10.88.0.253"]);
    lab.start();
    lab.wait_log(" ready ", 1);
    assert_eq!(lab.count("NAT service natweb: this node's default route does not go through"), 1);
    assert!(lab.lo_lines("10.88.5.99").is_empty(), "NAT puts no VIP on lo");
    lab.signal("-TERM");
    assert!(lab.wait_exit().success());
    // Through the gateway VIP: no warning.
    run(&["ip", "-n", &lab.ns, "route", "replace", "default", "via", "10.88.0.254"]);
    lab.log.lock().expect("log").clear();
    lab.start();
    lab.wait_log(" ready ", 1);
    assert_eq!(lab.count("does not go through"), 0);
    assert_eq!(lab.count("replies route through the gateway VIP"), 1);
    lab.signal("-TERM");
    assert!(lab.wait_exit().success());
}

/// The capabilities the systemd unit grants (`CapabilityBoundingSet=` of
/// config/clusterserverd.service) are enough for a tunnel node's whole set-up and undo.
#[test]
fn node_set_up_needs_only_the_units_capabilities() {
    if !can_run() {
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        println!("SKIPPED: setpriv (util-linux) is missing");
        eprintln!("SKIPPED: setpriv (util-linux) is missing");
        return;
    }
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/clusterserverd.service"))
        .expect("unit");
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet=")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect();
    assert_eq!(caps, ["net_admin", "net_raw"]);
    let bounding = format!("-all,{}", caps.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(","));
    let mut lab = Lab::new("cap");
    lab.config(true);
    lab.start_with(&["setpriv", "--bounding-set", &bounding, "--inh-caps", "-all", "--no-new-privs", "--"]);
    lab.wait_log(" ready ", 1);
    let pid = lab.child.as_ref().expect("running").id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).expect("CapEff").trim().to_string();
    assert_eq!(eff, "0000000000003000", "CAP_NET_ADMIN (12) and CAP_NET_RAW (13) only");
    assert_eq!(lab.lo_lines(DR_VIP).len(), 1);
    assert_eq!(sysctl(&lab.ns, "all/arp_ignore"), "1");
    assert!(lab.has_link("csn7"));
    lab.signal("-TERM");
    assert!(lab.wait_exit().success());
    assert!(lab.lo_lines(DR_VIP).is_empty());
    assert_eq!(sysctl(&lab.ns, "all/arp_ignore"), "0");
    assert!(!lab.has_link("csn7"));
}

/// An interface that disappears while the node runs does not stop the undo: the other
/// sysctls are still restored and the daemon exits 0.
#[test]
fn undo_survives_a_vanished_interface() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::new("gone");
    lab.config(false);
    lab.start();
    lab.wait_log(" ready ", 1);
    assert_eq!(sysctl(&lab.ns, "eth0/arp_ignore"), "1");
    run(&["ip", "-n", &lab.ns, "link", "del", "eth0"]);
    lab.signal("-TERM");
    assert!(lab.wait_exit().success(), "the undo failed on the vanished eth0");
    assert_eq!(lab.count("not restored: the interface has gone"), 2, "eth0/arp_ignore and eth0/arp_announce");
    assert_eq!(sysctl(&lab.ns, "all/arp_ignore"), "0");
    assert_eq!(sysctl(&lab.ns, "all/arp_announce"), "0");
    assert!(lab.lo_lines(DR_VIP).is_empty());
    assert_eq!(lab.state_files(), 0);
}
