//! Active-active mode end to end in namespaces: three ATMs running the real daemon, each
//! with its own BIRD 2 announcing the VIP over eBGP to a router namespace running BIRD 2,
//! whose kernel spreads flows over them (ECMP, L4 hash); two direct-routing real servers
//! (the daemon in node role: VIP on `lo`, ARP hidden) and a client behind the router:
//!
//! ```text
//!   client 10.90.2.100 --[br2]-- 10.90.2.1 router 10.90.0.254 --[br0]--+-- atm1 10.90.0.1
//!                                                                      +-- atm2 10.90.0.2
//!                                                                      +-- atm3 10.90.0.3
//!                                                                      +-- srv1 10.90.0.51
//!                                                                      +-- srv2 10.90.0.52
//! ```
//!
//! VIP 10.90.9.99:8080 (on no subnet: reached only through the router), `mh`. Checked, in
//! order: the router installs one route with three next hops and every request is served;
//! the admin channel of an active-active daemon through the real `cmc`, run in the router's
//! namespace (status reports role `active` and the VIP announced, servers and metrics answer,
//! a drain applied on every ATM leaves the server without new flows, draining the last server
//! on atm1 withdraws its route and `enable` brings it back, `cmc stop` takes atm1's
//! route out of the router's table and `cmc start` puts it back, `promote`/`demote` are
//! refused and counted, `cmc restart` withdraws and comes back);
//! a graceful stop (SIGTERM) of atm3 withdraws its next hop *before* the daemon exits and no
//! request fails; a crash (SIGKILL) of atm2 takes its BIRD with it and the router drops the
//! next hop within a second; atm2 rejoins and is a next hop again, having first asked its
//! peers for their connection tables (full sync on join): atm1's arrives, atm3 (stopped)
//! never answers, so atm2 announces after `bgp.join_sync_ms` (2 s here) and says which peer
//! was missing. The times are printed.
//!
//! Lab safety: namespaces `csl-aa<pid>-*`, veth ends created directly inside them, a drop
//! guard kills the processes this test started (by PID) and deletes the namespaces. Skips
//! loudly without root, /dev/net/tun, python3 or BIRD 2 (`scripts/install-deps`).
#![allow(clippy::disallowed_methods)] // reason: a real-network test waits on the wall clock

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clusterserver::admin::model::{ServiceStatus, Stats, Status, VipAnnouncement};
use support::daemon::{LoggedDaemons, spawn_logged};
use support::netlab::NetLab;
use support::traffic::NAME_RESPONDER;
use support::wait::wait_until;
use support::{ns_output, run};

const VIP: &str = "10.90.9.99";
const TOKEN: &str = "aa-admin-token-0123456789";
const BIRD: &str = "/usr/sbin/bird";

fn can_run() -> bool {
    let ok = support::is_root()
        && Path::new("/dev/net/tun").exists()
        && Path::new(BIRD).exists()
        && Command::new("python3").arg("-V").output().is_ok_and(|o| o.status.success());
    if !ok {
        let msg =
            "SKIPPED: needs root, /dev/net/tun, python3 and BIRD 2 (/usr/sbin/bird; scripts/install-deps)";
        println!("{msg}");
        eprintln!("{msg}");
    }
    ok
}

/// The lab: its daemons by host (declared first: killed before the namespaces go) and the
/// namespaces, files and helper processes ([`NetLab`]).
struct Lab {
    daemons: LoggedDaemons,
    net: NetLab,
}

const ATMS: [(&str, &str); 3] = [("atm1", "10.90.0.1"), ("atm2", "10.90.0.2"), ("atm3", "10.90.0.3")];

impl Lab {
    fn new() -> Lab {
        let net = NetLab::new("csl-aa", "");
        std::fs::create_dir_all(net.dir.join("run")).expect("dir");
        Lab { daemons: LoggedDaemons::default(), net }
    }

    fn ns(&self, host: &str) -> String {
        self.net.name(host)
    }

    /// Every host forwards (the router; the ATMs; harmless elsewhere).
    fn add_ns(&mut self, host: &str) -> String {
        let ns = self.net.add_ns(host);
        self.net.forwarding(&ns);
        ns
    }

    /// Interface `ifname` of `host` on bridge `br` with `addr/24`.
    fn wire(&mut self, host: &str, ifname: &str, br: &str, addr: &str) {
        let (ns, sw, port) = (self.ns(host), self.ns("sw"), format!("p-{host}-{ifname}"));
        self.net.attach(&ns, ifname, &format!("{addr}/24"), &sw, &port, br);
    }

    fn spawn_in(&mut self, host: &str, args: &[&str], log: &str) -> Child {
        let out =
            std::fs::OpenOptions::new().create(true).append(true).open(self.net.dir.join(log)).expect("log");
        Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .args(args)
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn")
    }

    fn log(&self, host: &str) -> PathBuf {
        self.net.dir.join(format!("{host}.log"))
    }

    fn text(&self, host: &str) -> String {
        std::fs::read_to_string(self.log(host)).unwrap_or_default()
    }

    fn start(&mut self, host: &str) {
        let (config, run_dir) = (self.net.dir.join("cfg.json5"), self.net.dir.join("run").join(host));
        let c = spawn_logged(&self.ns(host), &config, &run_dir, &self.log(host));
        self.daemons.insert(host, c);
    }

    fn daemon(&mut self, host: &str) -> &mut Child {
        self.daemons.get(host)
    }

    /// `cmc --config CFG --host ADDR ARGS` run in the router's namespace (the management host
    /// here; the config allows 10.90.0.0/24): success, stdout, stderr.
    fn cmc(&self, addr: &str, args: &[&str]) -> (bool, String, String) {
        support::daemon::cmc(&self.ns("router"), &self.net.dir.join("cfg.json5"), addr, args)
    }

    /// `cmc ARGS --json` against `addr`, parsed.
    fn cmc_json<T: serde::de::DeserializeOwned>(&self, addr: &str, args: &[&str]) -> T {
        let args: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
        let (ok, out, err) = self.cmc(addr, &args);
        assert!(ok, "cmc {args:?}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("cmc {args:?}: {e}: {out}"))
    }

    /// The router's next hops for the VIP.
    fn next_hops(&self) -> BTreeSet<String> {
        self.next_hops_of(VIP)
    }

    fn next_hops_of(&self, vip: &str) -> BTreeSet<String> {
        let out = ns_output(&self.ns("router"), &["ip", "-4", "route", "show", &format!("{vip}/32")]);
        let words: Vec<&str> = out.split_whitespace().collect();
        words.windows(2).filter(|w| w[0] == "via").map(|w| w[1].to_string()).collect()
    }

    /// `n` new connections through the VIP from the client: the names that answered, and
    /// how many failed.
    fn answered(&self, n: usize) -> (BTreeSet<String>, usize) {
        let addr: SocketAddr = format!("{VIP}:8080").parse().expect("addr");
        support::traffic::answered(&self.ns("client"), addr, n)
    }
}

fn hops(addrs: &[&str]) -> BTreeSet<String> {
    addrs.iter().map(|s| s.to_string()).collect()
}

const ROUTER_BIRD: &str = "router id 10.90.0.254;
protocol device { scan time 10; }
protocol kernel { ipv4 { export all; }; merge paths on limit 16; }
template bgp atm { local as 65000; hold time 3; keepalive time 1;
  connect delay time 1; connect retry time 2; error wait time 1, 5;
  ipv4 { import all; export none; }; }
protocol bgp atm1 from atm { neighbor 10.90.0.1 as 65001; }
protocol bgp atm2 from atm { neighbor 10.90.0.2 as 65001; }
protocol bgp atm3 from atm { neighbor 10.90.0.3 as 65001; }
";

fn build(lab: &mut Lab) {
    let sw = lab.add_ns("sw");
    for br in ["br0", "br2"] {
        lab.net.bridge(&sw, br);
    }
    lab.add_ns("router");
    lab.wire("router", "eth0", "br0", "10.90.0.254");
    lab.wire("router", "eth1", "br2", "10.90.2.1");
    // ECMP on the 5-tuple (TECH-NOTES: policy 1 across veth follows the socket's hash,
    // which TCP re-rolls on a retransmission timeout).
    let r = lab.ns("router");
    run(&["ip", "netns", "exec", &r, "sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=3"]);
    run(&["ip", "netns", "exec", &r, "sysctl", "-qw", "net.ipv4.fib_multipath_hash_fields=0x0037"]);
    lab.add_ns("client");
    lab.wire("client", "eth0", "br2", "10.90.2.100");
    run(&["ip", "-n", &lab.ns("client"), "route", "add", "default", "via", "10.90.2.1"]);
    for (h, a) in ATMS.iter().copied().chain([("srv1", "10.90.0.51"), ("srv2", "10.90.0.52")]) {
        lab.add_ns(h);
        lab.wire(h, "eth0", "br0", a);
        run(&["ip", "-n", &lab.ns(h), "route", "add", "default", "via", "10.90.0.254"]);
    }
}

const VIP2: &str = "10.90.9.98";

/// The config; `reloaded`: srv2's weight in `web` changed and a second service `web2` on
/// [`VIP2`] added (the live reload of [`live_reload`]).
fn config(lab: &Lab, reloaded: bool) -> String {
    let (secret, token) = (lab.net.dir.join("secret"), lab.net.dir.join("admin.token"));
    for (f, text) in [(&secret, "aa-secret"), (&token, TOKEN)] {
        std::fs::write(f, text).expect("secret");
        std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    }
    let atms: Vec<String> =
        ATMS.iter().map(|(n, a)| format!("{{ name: '{n}', address: '{a}', interface: 'eth0' }}")).collect();
    let run = lab.net.dir.join("run");
    let (w2, web2) = match reloaded {
        false => ("", String::new()),
        true => (", weight: 3", format!(", {{ name: 'web2', vip: '{VIP2}', port: 8080, forwarding: 'dr', scheduler: 'mh',
    servers: [ {{ name: 'srv1', address: '10.90.0.51', port: 8080 }}, {{ name: 'srv2', address: '10.90.0.52', port: 8080 }} ],
    checks: [ {{ kind: 'tcp', interval_ms: 500, timeout_ms: 300, rise: 2 }} ] }}")),
    };
    format!(
        "{{ cluster: {{ name: 'aa', id: 90, secret_file: '{}', mode: 'active-active' }},
  atms: [ {} ],
  bgp: {{ local_as: 65001, neighbors: [ {{ address: '10.90.0.254', peer_as: 65000 }} ], drain_ms: 1500, join_sync_ms: 2000,
          control_socket: '{}/bird-{{atm}}.ctl', config_file: '{}/bird-{{atm}}.conf' }},
  services: [ {{ name: 'web', vip: '{VIP}', port: 8080, forwarding: 'dr', scheduler: 'mh',
    servers: [ {{ name: 'srv1', address: '10.90.0.51', port: 8080 }}, {{ name: 'srv2', address: '10.90.0.52', port: 8080{w2} }} ],
    checks: [ {{ kind: 'tcp', interval_ms: 500, timeout_ms: 300 }} ] }}{web2} ],
  security: {{ admin_allow: ['10.90.0.0/24'], token_file: '{}' }} }}",
        secret.display(),
        atms.join(", "),
        run.display(),
        run.display(),
        token.display()
    )
}

/// The admin channel of active-active daemons, through the real `cmc` (see the module docs).
fn admin_channel(lab: &Lab) {
    let atm1 = ATMS[0].1;
    let all = hops(&["10.90.0.1", "10.90.0.2", "10.90.0.3"]);
    let s: Status = lab.cmc_json(atm1, &["status"]);
    assert_eq!((s.role.as_str(), s.stopped, s.peers.len()), ("active", false, 0), "{s:?}");
    let announced = VipAnnouncement { vip: VIP.into(), announced: true, reason: None };
    assert_eq!(s.announcements, vec![announced.clone()]);
    let (ok, out, err) = lab.cmc(atm1, &["servers"]);
    assert!(ok && out.contains("srv1") && out.contains("srv2"), "{out}{err}");
    let (ok, out, _) = lab.cmc(atm1, &["metrics"]);
    assert!(ok && out.contains(&format!("clusterserver_vip_announced{{vip=\"{VIP}\"}} 1")), "{out}");
    assert!(out.contains("clusterserver_check_runs_total{service=\"web\",server=\"srv1\""), "{out}");

    // Drain srv1 on every ATM (Maglev: each ATM schedules on its own): no new flow reaches it,
    // and atm1's own counters show its share went to srv2 only.
    let servers = |addr: &str| lab.cmc_json::<Vec<ServiceStatus>>(addr, &["servers"]).remove(0).servers;
    let before = servers(atm1);
    assert!(
        before.iter().all(|s| s.healthy && s.admin == "enabled" && s.weight == s.config_weight),
        "{before:?}"
    );
    for (_, a) in ATMS {
        let (ok, out, err) = lab.cmc(a, &["drain", "web", "srv1"]);
        assert!(ok && out.contains("drain web/srv1"), "{err}");
    }
    let drained = servers(atm1);
    assert_eq!((drained[0].weight, drained[0].admin.as_str()), (0, "drained"));
    let (names, failed) = lab.answered(30);
    assert_eq!((names, failed), (hops(&["srv2"]), 0), "requests while srv1 is drained");
    let after = servers(atm1);
    assert_eq!(after[0].connections_total, before[0].connections_total, "drained srv1 got flows via atm1");
    assert!(after[1].connections_total > before[1].connections_total, "no request went through atm1");
    let s: Status = lab.cmc_json(atm1, &["status"]);
    assert_eq!(s.announcements, vec![announced.clone()], "srv2 is left: the VIP stays announced");
    // With srv2 drained too, atm1 has no server to send new flows to: it withdraws the VIP.
    let (ok, _, err) = lab.cmc(atm1, &["drain", "web", "srv2"]);
    assert!(ok, "{err}");
    wait_until("atm1 withdrawn with every server drained", Duration::from_secs(10), || {
        lab.next_hops() == hops(&["10.90.0.2", "10.90.0.3"])
    });
    let s: Status = lab.cmc_json(atm1, &["status"]);
    assert_eq!(s.announcements[0].reason.as_deref(), Some("no_healthy_server"), "{s:?}");
    let (ok, _, err) = lab.cmc(atm1, &["enable", "web", "srv2"]);
    assert!(ok, "{err}");
    wait_until("atm1 announces again after enable", Duration::from_secs(10), || lab.next_hops() == all);
    for (_, a) in ATMS {
        let (ok, _, err) = lab.cmc(a, &["enable", "web", "srv1"]);
        assert!(ok, "{err}");
    }
    let (names, failed) = lab.answered(30);
    assert_eq!((names, failed), (hops(&["srv1", "srv2"]), 0), "requests after enable");

    // Stop: atm1's next hop leaves the router's table while the daemon runs on; start: back.
    let (ok, out, err) = lab.cmc(atm1, &["stop"]);
    assert!(ok && out.contains("forwarding stopped on atm1"), "{out}{err}");
    let t = wait_until("atm1 withdrawn by cmc stop", Duration::from_secs(10), || {
        lab.next_hops() == hops(&["10.90.0.2", "10.90.0.3"])
    });
    println!("cmc stop: atm1's next hop gone {t:?} after the answer");
    let s: Status = lab.cmc_json(atm1, &["status"]);
    let held =
        VipAnnouncement { vip: VIP.into(), announced: false, reason: Some("stopped_by_operator".into()) };
    assert!(s.stopped && s.announcements == vec![held], "{s:?}");
    let (ok, _, err) = lab.cmc(atm1, &["stop"]);
    assert!(!ok && err.contains("already stopped"), "{err}");
    let (_, failed) = lab.answered(30);
    assert_eq!(failed, 0, "requests failed while atm1 was stopped");
    let (ok, out, err) = lab.cmc(atm1, &["start"]);
    assert!(ok && out.contains("forwarding started on atm1"), "{out}{err}");
    let t = wait_until("atm1 back by cmc start", Duration::from_secs(10), || lab.next_hops() == all);
    println!("cmc start: atm1 a next hop again {t:?} after the answer");
    let s: Status = lab.cmc_json(atm1, &["status"]);
    assert!(!s.stopped && s.announcements == vec![announced], "{s:?}");

    // No primary here: promote and demote are refused with a reason, changing nothing, and
    // counted (with the refused second stop) as bad requests.
    for cmd in ["promote", "demote"] {
        let (ok, _, err) = lab.cmc(atm1, &[cmd]);
        assert!(!ok && err.contains("active-active mode has no primary"), "{cmd}: {err}");
    }
    let st: Stats = lab.cmc_json(atm1, &["stats"]);
    assert!(st.admin_bad_requests >= 3 && st.engine_active, "{st:?}");
    let (ok, out, err) = lab.cmc(atm1, &["reload"]);
    assert!(ok && out.contains("unchanged"), "{out}{err}");
    assert_eq!(lab.next_hops(), all, "the refused and no-op actions changed the routes");

    // Restart: withdraw, drain, restart in-process; the route and the admin channel return.
    let ready = lab.text("atm1").matches(" ready node=atm1").count();
    let (ok, out, err) = lab.cmc(atm1, &["restart"]);
    assert!(ok && out.contains("restarting"), "{out}{err}");
    wait_until("atm1 withdrawn by cmc restart", Duration::from_secs(5), || {
        lab.next_hops() == hops(&["10.90.0.2", "10.90.0.3"])
    });
    let t = wait_until("atm1 back after cmc restart", Duration::from_secs(30), || {
        lab.text("atm1").matches(" ready node=atm1").count() > ready && lab.next_hops() == all
    });
    println!("cmc restart: atm1 a next hop again {t:?} after its withdrawal");
    let s: Status = lab.cmc_json(atm1, &["status"]);
    assert!(s.role == "active" && s.announcements[0].announced, "{s:?}");
    let (_, failed) = lab.answered(30);
    assert_eq!(failed, 0, "requests failed after atm1's restart");
}

/// A live reload on every host, nodes first, then the ATMs one by one, while requests run
/// through the VIP: a weight changed and a service on a new VIP added. The VIP is never
/// withdrawn (the router keeps its three next hops throughout, no ATM logs a withdrawal),
/// no request fails, no daemon restarts, and the new VIP is announced by all three (a new
/// service's servers start up, as at start-up) and served by both servers (the nodes put it
/// on `lo` in place).
fn live_reload(lab: &mut Lab) {
    let order: Vec<&str> = ["srv1", "srv2"].into_iter().chain(ATMS.iter().map(|(h, _)| *h)).collect();
    let pids: Vec<String> = order.iter().map(|h| lab.daemon(h).id().to_string()).collect();
    let lab = &*lab;
    let all = hops(&["10.90.0.1", "10.90.0.2", "10.90.0.3"]);
    std::fs::write(lab.net.dir.join("cfg.json5"), config(lab, true)).expect("config");
    let (ok, out, err) = lab.cmc(ATMS[0].1, &["reload", "--plan"]);
    assert!(ok && out.contains("services.web2") && out.contains("0 by handover"), "{out}{err}");
    let withdrawals = |h: &str| lab.text(h).matches("withdrawn=[10.90.9.99]").count();
    let readies = |h: &str| lab.text(h).matches(" ready node=").count();
    let before: Vec<(usize, usize)> = ATMS.iter().map(|(h, _)| (withdrawals(h), readies(h))).collect();
    // Requests through the VIP for the whole reload, from a second thread.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ns, addr) = (lab.ns("client"), format!("{VIP}:8080").parse::<SocketAddr>().expect("addr"));
    let flag = std::sync::Arc::clone(&stop);
    let load = std::thread::spawn(move || {
        let (mut sent, mut failed) = (0, 0);
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            failed += support::traffic::answered(&ns, addr, 5).1;
            sent += 5;
        }
        (sent, failed)
    });
    let mut seen: Vec<BTreeSet<String>> = Vec::new();
    let started = Instant::now();
    for (h, pid) in order.iter().zip(&pids) {
        let n = lab.text(h).matches("reload applied live").count();
        run(&["kill", "-HUP", pid]);
        wait_until(&format!("{h} applies the reload live"), Duration::from_secs(10), || {
            seen.push(lab.next_hops());
            lab.text(h).matches("reload applied live").count() > n
        });
    }
    let t = wait_until("the new VIP announced by all three", Duration::from_secs(20), || {
        seen.push(lab.next_hops());
        lab.next_hops_of(VIP2) == all
    });
    println!(
        "live reload: the new VIP has 3 next hops {t:?} after the last ATM's reload ({:?} in all)",
        started.elapsed()
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, failed) = load.join().expect("load");
    println!("live reload: {sent} requests through the VIP during the reloads, {failed} failed");
    assert_eq!(failed, 0, "requests failed during the live reload");
    assert!(sent > 0);
    assert!(seen.iter().all(|h| *h == all), "the VIP lost a next hop during the reload: {seen:?}");
    for ((h, _), (w, r)) in ATMS.iter().zip(before) {
        assert_eq!(withdrawals(h), w, "{h} withdrew the VIP during the reload:\n{}", lab.text(h));
        assert_eq!(readies(h), r, "{h} restarted for the reload");
    }
    for h in ["srv1", "srv2"] {
        assert!(lab.text(h).contains("vips_added=10.90.9.98"), "{h}:\n{}", lab.text(h));
    }
    let addr2: SocketAddr = format!("{VIP2}:8080").parse().expect("addr");
    let (names, failed) = support::traffic::answered(&lab.ns("client"), addr2, 30);
    assert_eq!((names, failed), (hops(&["srv1", "srv2"]), 0), "requests to the new VIP");
    let st: Vec<ServiceStatus> = lab.cmc_json(ATMS[0].1, &["servers"]);
    assert_eq!(st.len(), 2, "{st:?}");
    assert_eq!(st[0].servers[1].config_weight, 3, "{st:?}");
}

#[test]
fn atms_announce_over_bgp_drain_gracefully_crash_and_rejoin() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::new();
    build(&mut lab);
    std::fs::write(lab.net.dir.join("cfg.json5"), config(&lab, false)).expect("config");
    std::fs::write(lab.net.dir.join("router.conf"), ROUTER_BIRD).expect("router config");
    let (conf, sock) = (lab.net.dir.join("router.conf"), lab.net.dir.join("router.ctl"));
    let router_bird = lab.spawn_in(
        "router",
        &[BIRD, "-f", "-c", conf.to_str().unwrap(), "-s", sock.to_str().unwrap()],
        "router-bird.log",
    );
    lab.net.others.push(router_bird);
    for (h, n) in [("srv1", "srv1"), ("srv2", "srv2")] {
        let c = lab.spawn_in(
            h,
            &["timeout", "300", "python3", "-c", NAME_RESPONDER, n],
            &format!("{h}-responder.log"),
        );
        lab.net.others.push(c);
        lab.start(h);
    }
    for h in ["srv1", "srv2"] {
        wait_until(&format!("{h} ready"), Duration::from_secs(10), || {
            lab.text(h).contains(&format!(" ready node={h}"))
        });
    }
    for (h, _) in ATMS {
        lab.start(h);
    }
    let all = hops(&["10.90.0.1", "10.90.0.2", "10.90.0.3"]);
    let t = wait_until("three next hops", Duration::from_secs(30), || lab.next_hops() == all);
    println!("router: 3 next hops {t:?} after the ATMs started");
    for (h, _) in ATMS {
        let log = lab.text(h);
        let joined = log
            .lines()
            .find(|l| l.contains("joined: the connection table") || l.contains("JOIN SYNC INCOMPLETE"));
        println!("{h} join sync: {}", joined.unwrap_or("none logged"));
    }
    for (h, _) in ATMS {
        assert!(
            lab.text(h).contains("announce node=") && lab.text(h).contains("vips=[10.90.9.99]"),
            "{h}:\n{}",
            lab.text(h)
        );
    }
    let (names, failed) = lab.answered(60);
    println!("3 ATMs: answered by {names:?}, {failed} failed");
    assert_eq!(failed, 0, "atm1:\n{}", lab.text("atm1"));
    assert_eq!(names, hops(&["srv1", "srv2"]));

    admin_channel(&lab);
    live_reload(&mut lab);

    // Graceful drain of atm3: withdrawn first, while the daemon still runs.
    let pid = lab.daemon("atm3").id().to_string();
    run(&["kill", "-TERM", &pid]);
    let t = wait_until("atm3 withdrawn", Duration::from_secs(5), || {
        lab.next_hops() == hops(&["10.90.0.1", "10.90.0.2"])
    });
    assert!(
        lab.daemon("atm3").try_wait().expect("wait").is_none(),
        "atm3 exited before its withdrawal was seen"
    );
    println!("drain: atm3's next hop gone {t:?} after SIGTERM, the daemon still draining");
    let (_, failed) = lab.answered(30);
    assert_eq!(failed, 0, "requests failed during atm3's drain");
    let mut st = None;
    wait_until("atm3 exits", Duration::from_secs(10), || {
        st = lab.daemon("atm3").try_wait().expect("wait");
        st.is_some()
    });
    assert!(st.is_some_and(|s| s.success()), "atm3 exit {st:?}:\n{}", lab.text("atm3"));
    assert!(lab.text("atm3").contains("BIRD started"));
    // Every peer's sync datagrams were accepted (one replay window per peer): the final
    // counters of atm3's graceful exit show records applied and nothing refused.
    let stopped = lab.text("atm3").lines().find(|l| l.contains("data plane stopped")).map(str::to_string);
    let stopped = stopped.unwrap_or_else(|| panic!("no final counters:\n{}", lab.text("atm3")));
    assert!(stopped.contains("rejected: 0,") && !stopped.contains("applied_records: 0,"), "{stopped}");
    // atm3 answered full-sync requests (the others' starts and atm1's restart) and, at its
    // own start, got the end markers of both peers.
    assert!(stopped.contains("full_sync=FullSyncStats") && !stopped.contains("ends_sent: 0,"), "{stopped}");
    assert!(stopped.contains("ends_received: 2,"), "{stopped}");

    // Crash of atm2: its BIRD dies with it, the session closes, the next hop goes.
    let crashed = Instant::now();
    let _ = lab.daemon("atm2").kill();
    let _ = lab.daemon("atm2").wait();
    let t = wait_until("atm2's next hop gone", Duration::from_secs(5), || {
        lab.next_hops() == hops(&["10.90.0.1"])
    });
    println!("crash: atm2's next hop gone {t:?} after SIGKILL (session closed by its BIRD's death)");
    assert!(crashed.elapsed() < Duration::from_secs(5));
    let (names, failed) = lab.answered(30);
    assert_eq!(failed, 0, "requests failed with one ATM left");
    assert_eq!(names, hops(&["srv1", "srv2"]));

    // atm2 joins again.
    lab.start("atm2");
    let t = wait_until("atm2 back", Duration::from_secs(30), || {
        lab.next_hops() == hops(&["10.90.0.1", "10.90.0.2"])
    });
    println!("join: atm2 a next hop again {t:?} after its start");
    // atm3's daemon is stopped but its host is up: its "port unreachable" tells atm2 not to
    // wait for its table (IP_RECVERR), so atm2 announces once atm1 has answered, well
    // before the join bound (2 s); the log names atm3.
    assert!(t < Duration::from_millis(2000), "waited the join bound for a peer whose daemon is gone: {t:?}");
    let log = lab.text("atm2");
    let rejoin = log.rfind("joining: asking every peer").expect("join sync started");
    let gone =
        log[rejoin..].lines().find(|l| l.contains("daemon is gone")).unwrap_or_else(|| panic!("{log}"));
    assert!(gone.contains("peer=10.90.0.3"), "{gone}");
    assert!(log[rejoin..].contains("joined: the connection table of every peer"), "{log}");
    let (_, failed) = lab.answered(30);
    assert_eq!(failed, 0, "requests failed after atm2 rejoined");
}
