//! Active-active on IPv6 only, in namespaces: two ATMs whose only addresses are IPv6 (their
//! BIRD router ids the last 32 bits of them) announce an IPv6 VIP over IPv6 eBGP sessions to
//! a router running BIRD 2, whose kernel spreads flows over them (IPv6 ECMP, L4 hash); two
//! direct-routing real servers (the daemon in node role: the VIP on `lo` as a /128) answer.
//!
//! ```text
//!   client fd00:92:2::100 --[br2]-- fd00:92:2::1 router fd00:92::fe --[br0]--+-- atm1 fd00:92::1
//!                                                                           +-- atm2 fd00:92::2
//!                                                                           +-- srv1 fd00:92::51
//!                                                                           +-- srv2 fd00:92::52
//! ```
//!
//! Checked: the router installs one IPv6 route to the VIP with both ATMs as next hops and
//! every request is served, by both servers; a crash (SIGKILL) of atm2 takes its BIRD with
//! it, the router drops its next hop and no request fails; atm2 starts again and is a next
//! hop again.
//!
//! Lab safety: namespaces `csl-a6<pid>-*`, veth ends created directly inside them, addresses
//! without DAD, no IPv4 but loopback; a drop guard kills the processes this test started (by
//! PID) and deletes the namespaces. Skips loudly without root, /dev/net/tun, python3, IPv6 or
//! BIRD 2 (`scripts/install-deps`).
#![allow(clippy::disallowed_methods)] // reason: a real-network test waits on the wall clock

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::daemon::DaemonLab;
use support::wait::wait_until;
use support::{in_ns, ipv6, ns_output};

const VIP: &str = "fd00:92:9::99";
const BIRD: &str = "/usr/sbin/bird";
const ATMS: [(&str, &str); 2] = [("atm1", "fd00:92::1"), ("atm2", "fd00:92::2")];
const SERVERS: [(&str, &str); 2] = [("srv1", "fd00:92::51"), ("srv2", "fd00:92::52")];

/// A real server on `[::]:8080` answering every connection with its name (argv[1]).
const NAME_RESPONDER6: &str = "import socket,sys\ns=socket.socket(socket.AF_INET6)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('::',8080))\ns.listen(64)\nwhile True:\n  c,_=s.accept()\n  c.sendall(sys.argv[1].encode())\n  c.close()\n";

const ROUTER_BIRD: &str = "router id 10.92.0.254;
protocol device { scan time 10; }
protocol kernel { ipv6 { export all; }; merge paths on limit 16; }
template bgp atm { local as 65000; hold time 3; keepalive time 1;
  connect delay time 1; connect retry time 2; error wait time 1, 5;
  ipv6 { import all; export none; }; }
protocol bgp atm1 from atm { neighbor fd00:92::1 as 65001; }
protocol bgp atm2 from atm { neighbor fd00:92::2 as 65001; }
";

fn can_run() -> bool {
    let ok = Path::new(BIRD).exists()
        && Command::new("python3").arg("-V").output().is_ok_and(|o| o.status.success());
    if !ok {
        println!("SKIPPED: needs python3 and BIRD 2 (/usr/sbin/bird; scripts/install-deps)");
        eprintln!("SKIPPED: needs python3 and BIRD 2 (/usr/sbin/bird; scripts/install-deps)");
        return false;
    }
    ipv6::can_run("CSL_A6_NEVER_A_HELPER")
}

fn config(dir: &Path) -> String {
    let atms: Vec<String> =
        ATMS.iter().map(|(n, a)| format!("{{ name: '{n}', address: '{a}', interface: 'eth0' }}")).collect();
    let servers: Vec<String> =
        SERVERS.iter().map(|(n, a)| format!("{{ name: '{n}', address: '{a}', port: 8080 }}")).collect();
    let run = dir.join("run");
    format!(
        "{{ cluster: {{ name: 'a6', id: 92, secret_file: 'secret', mode: 'active-active' }},
  atms: [ {} ],
  bgp: {{ local_as: 65001, neighbors: [ {{ address: 'fd00:92::fe', peer_as: 65000 }} ], drain_ms: 1000, join_sync_ms: 1000,
          control_socket: '{}/bird-{{atm}}.ctl', config_file: '{}/bird-{{atm}}.conf' }},
  services: [ {{ name: 'web6', vip: '{VIP}', port: 8080, forwarding: 'dr', scheduler: 'mh',
    servers: [ {} ], checks: [ {{ kind: 'tcp', interval_ms: 500, timeout_ms: 300 }} ] }} ] }}",
        atms.join(", "),
        run.display(),
        run.display(),
        servers.join(", ")
    )
}

/// The router's next hops for the VIP.
fn next_hops(router: &str) -> BTreeSet<String> {
    let out = ns_output(router, &["ip", "-6", "route", "show", &format!("{VIP}/128")]);
    let words: Vec<&str> = out.split_whitespace().collect();
    words.windows(2).filter(|w| w[0] == "via").map(|w| w[1].to_string()).collect()
}

fn hops(addrs: &[&str]) -> BTreeSet<String> {
    addrs.iter().map(|s| s.to_string()).collect()
}

fn spawn(ns: &str, args: &[&str], log: &Path) -> Child {
    let out = std::fs::File::create(log).expect("log");
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn")
}

#[test]
fn ipv6_atms_announce_an_ipv6_vip_over_bgp_and_survive_a_crash() {
    if !can_run() {
        return;
    }
    let mut lab = DaemonLab::new("csl-a6", "");
    let sw = lab.ns("sw");
    lab.net.bridge(&sw, "br0");
    lab.net.bridge(&sw, "br2");
    let router = lab.ns("router");
    lab.net.attach6(&router, "eth0", "fd00:92::fe/64", &sw, "r0", "br0");
    lab.net.attach6(&router, "eth1", "fd00:92:2::1/64", &sw, "r1", "br2");
    in_ns(&router, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    // ECMP on the 5-tuple (as the IPv4 lab: the socket hash would move a retransmitting flow).
    in_ns(&router, &["sysctl", "-qw", "net.ipv6.fib_multipath_hash_policy=1"]);
    let client = lab.ns("client");
    lab.net.attach6(&client, "eth0", "fd00:92:2::100/64", &sw, "c0", "br2");
    in_ns(&client, &["ip", "-6", "route", "add", "default", "via", "fd00:92:2::1"]);
    for (i, (h, a)) in ATMS.iter().chain(SERVERS.iter()).enumerate() {
        let ns = lab.ns(h);
        lab.net.attach6(&ns, "eth0", &format!("{a}/64"), &sw, &format!("h{i}"), "br0");
        in_ns(&ns, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        in_ns(&ns, &["ip", "-6", "route", "add", "default", "via", "fd00:92::fe"]);
    }
    let dir = lab.net.dir.clone();
    std::fs::create_dir_all(dir.join("run")).expect("run dir");
    ipv6::write_private(&dir, &[("secret", "a6-secret-0123456789"), ("cfg.json5", &config(&dir))]);
    std::fs::write(dir.join("router.conf"), ROUTER_BIRD).expect("router config");
    let (conf, sock) = (dir.join("router.conf"), dir.join("router.ctl"));
    let bird = [BIRD, "-f", "-c", conf.to_str().expect("path"), "-s", sock.to_str().expect("path")];
    let router_bird = spawn(&router, &bird, &dir.join("router-bird.log"));
    lab.net.others.push(router_bird);
    let cfg = dir.join("cfg.json5");
    for (h, _) in SERVERS {
        let ns = lab.net.name(h);
        let responder = spawn(
            &ns,
            &["timeout", "300", "python3", "-c", NAME_RESPONDER6, h],
            &dir.join(format!("{h}-responder.log")),
        );
        lab.net.others.push(responder);
        lab.start_daemon(h, &cfg);
    }
    for (h, _) in SERVERS {
        wait_until(&format!("{h} ready"), Duration::from_secs(10), || lab.daemon(h).logged(" ready "));
    }
    for (h, _) in ATMS {
        lab.start_daemon(h, &cfg);
    }
    let both = hops(&["fd00:92::1", "fd00:92::2"]);
    let t = wait_until("two IPv6 next hops", Duration::from_secs(30), || next_hops(&router) == both);
    println!("router: 2 IPv6 next hops {t:?} after the ATMs started");
    for (h, _) in ATMS {
        let bird_conf =
            std::fs::read_to_string(dir.join("run").join(format!("bird-{h}.conf"))).expect("BIRD config");
        let id = if h == "atm1" { "0.0.0.1" } else { "0.0.0.2" };
        assert!(bird_conf.contains(&format!("router id {id};")), "{h}:\n{bird_conf}");
        assert!(bird_conf.contains(&format!("route {VIP}/128 blackhole;")), "{h}:\n{bird_conf}");
    }
    let addr: SocketAddr = format!("[{VIP}]:8080").parse().expect("addr");
    let (names, failed) = support::traffic::answered(&client, addr, 40);
    println!("2 ATMs: answered by {names:?}, {failed} failed");
    assert_eq!(failed, 0);
    assert_eq!(names, hops(&["srv1", "srv2"]));

    // Crash of atm2: its BIRD dies with it, the session closes, the next hop goes.
    lab.daemon_mut("atm2").child.kill().expect("kill");
    let _ = lab.daemon_mut("atm2").child.wait();
    let t = wait_until("atm2's next hop gone", Duration::from_secs(5), || {
        next_hops(&router) == hops(&["fd00:92::1"])
    });
    println!("crash: atm2's IPv6 next hop gone {t:?} after SIGKILL");
    let (names, failed) = support::traffic::answered(&client, addr, 30);
    assert_eq!(failed, 0, "requests failed with one ATM left");
    assert_eq!(names, hops(&["srv1", "srv2"]));

    lab.start_daemon("atm2", &cfg);
    let t = wait_until("atm2 back", Duration::from_secs(30), || next_hops(&router) == both);
    println!("join: atm2 an IPv6 next hop again {t:?} after its start");
    let (_, failed) = support::traffic::answered(&client, addr, 30);
    assert_eq!(failed, 0, "requests failed after atm2 rejoined");
}
