//! IPv6 direct routing and tunnels through the real daemons, in namespaces: one ATM and one
//! real server whose node daemon puts the IPv6 VIPs on its `lo` (/128, no DAD, marked by
//! their route metric) and decapsulates in user space IPv6-in-IPv6, IPv4-in-IPv6 and
//! IPv6-in-IPv4 (this kernel has no `ip6_tunnel` nor `sit`). A client reaches each VIP; the
//! server never answers Neighbor Solicitations for the VIPs on its `lo` (with the ATM's
//! daemon stopped and the client's cache flushed, nobody answers for them); a SIGKILLed
//! node daemon's VIPs are cleared by the next start, and SIGTERM leaves the node as found.
//!
//! Topology (namespaces `csl-n6<pid>-*`, veth pairs created inside them, addresses without
//! duplicate-address detection): client, ATM and server on one LAN, `fd00:63::/64` and
//! `10.63.0.0/24`.
#![allow(clippy::disallowed_methods)] // reason: a real-network test waits on the wall clock

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::daemon::DaemonLab;
use support::traffic::echo_once;
use support::wait::wait_until;
use support::{in_ns, ipv6, ns_output};

const HELPER_ENV: &str = "CSL_N6_HELPER";

#[test]
fn helper_echo_server() {
    support::echo_server_helper(HELPER_ENV, Duration::from_secs(120));
}

const CONFIG: &str = r#"{
  cluster: { name: "n6lab", id: 63, heartbeat_port: 17100, secret_file: "secret" },
  atms: [ { name: "atm1", address: "10.63.0.1", interface: "eth0" } ],
  timers: { heartbeat_ms: 100, dead_after: 3 },
  services: [
    { name: "dr6", vip: "fd00:63::99", port: 8080, forwarding: "dr",
      servers: [ { name: "s1", address: "fd00:63::20" } ] },
    { name: "tun6", vip: "fd00:63::98", port: 8080, forwarding: "tunnel",
      servers: [ { name: "s1", address: "fd00:63::20" } ] },
    { name: "tun4in6", vip: "10.63.0.97", port: 8080, forwarding: "tunnel",
      servers: [ { name: "s1", address: "fd00:63::20" } ] },
    { name: "tun6in4", vip: "fd00:63::97", port: 8080, forwarding: "tunnel",
      servers: [ { name: "s1", address: "10.63.0.20" } ] },
  ],
}
"#;

/// The VIPs, each with the tunnel or DR kind it exercises.
const VIPS: [(&str, &str); 4] = [
    ("[fd00:63::99]:8080", "IPv6 direct routing"),
    ("[fd00:63::98]:8080", "IPv6-in-IPv6"),
    ("10.63.0.97:8080", "IPv4-in-IPv6"),
    ("[fd00:63::97]:8080", "IPv6-in-IPv4"),
];

/// `lo`'s addresses, one `ip -o addr` line each.
fn lo_addrs(ns: &str) -> String {
    ns_output(ns, &["ip", "-o", "addr", "show", "dev", "lo"])
}

#[test]
fn ipv6_dr_and_every_tunnel_family_reach_the_node_which_never_answers_ndp_for_its_vips() {
    if !ipv6::can_run(HELPER_ENV) {
        return;
    }
    let mut lab = DaemonLab::new("csl-n6", "");
    let (sw, client, atm, server) = (lab.ns("sw"), lab.ns("client"), lab.ns("atm1"), lab.ns("s1"));
    lab.net.bridge(&sw, "br0");
    lab.net.attach(&client, "eth0", "10.63.0.10/24", &sw, "c0", "br0");
    lab.net.attach(&atm, "eth0", "10.63.0.1/24", &sw, "a0", "br0");
    lab.net.attach(&server, "eth0", "10.63.0.20/24", &sw, "s0", "br0");
    lab.net.forwarding(&atm);
    in_ns(&atm, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    ipv6::addr6(&client, "fd00:63::10/64", "eth0");
    ipv6::addr6(&atm, "fd00:63::1/64", "eth0");
    ipv6::addr6(&server, "fd00:63::20/64", "eth0");
    ipv6::write_private(&lab.net.dir, &[("secret", "lab-secret-0123456789\n"), ("n6.json5", CONFIG)]);
    // One dual-stack listener answers on every VIP the node holds.
    let srv = support::spawn_echo_helper(&server, HELPER_ENV, "[::]:8080");
    lab.net.others.push(srv);
    let config = lab.net.dir.join("n6.json5");
    lab.start_daemon("s1", &config);
    wait_until("the node daemon is ready", Duration::from_secs(10), || lab.daemon("s1").logged(" ready "));
    let lo = lo_addrs(&server);
    for vip in ["fd00:63::99/128", "fd00:63::98/128", "fd00:63::97/128", "10.63.0.97/32"] {
        assert!(lo.contains(vip), "{vip} on the node's lo:\n{lo}");
    }
    let metric = format!("metric {}", clusterserver::node::VIP_METRIC_BASE + 63);
    assert_eq!(
        lo.lines().filter(|l| l.contains("fd00:63::") && l.contains(&metric)).count(),
        3,
        "marked:\n{lo}"
    );
    assert!(!lo.contains("tentative"), "no duplicate-address detection:\n{lo}");

    lab.start_daemon("atm1", &config);
    wait_until("the ATM is primary", Duration::from_secs(10), || lab.primaries().len() == 1);
    for (vip, kind) in VIPS {
        let addr: SocketAddr = vip.parse().expect("addr");
        let took = wait_until(&format!("{kind} answers"), Duration::from_secs(10), || {
            echo_once(&client, addr, Duration::from_millis(500))
        });
        println!("{kind} through {vip}: first answer after {took:?}");
        let ok = (0..10).filter(|_| echo_once(&client, addr, Duration::from_secs(1))).count();
        assert_eq!(ok, 10, "{kind}: requests through {vip}");
    }
    let atm_mac = ipv6::mac_of(&atm, "eth0");
    for vip in ["fd00:63::99", "fd00:63::98", "fd00:63::97", "10.63.0.97"] {
        assert_eq!(ipv6::neigh_mac(&client, vip), Some(atm_mac.clone()), "{vip} resolves to the ATM only");
    }

    // With the ATM's daemon gone and the client's cache flushed, nobody answers for the
    // VIPs: the node holds them on lo and stays silent (the server's own address resolves).
    lab.daemon_mut("atm1").child.kill().expect("kill the ATM");
    let _ = lab.daemon_mut("atm1").child.wait();
    in_ns(&client, &["ip", "neigh", "flush", "dev", "eth0"]);
    for (vip, _) in VIPS {
        assert!(
            !echo_once(&client, vip.parse().expect("addr"), Duration::from_millis(1500)),
            "{vip} unreachable"
        );
    }
    for vip in ["fd00:63::99", "fd00:63::98", "fd00:63::97"] {
        assert_eq!(ipv6::neigh_mac(&client, vip), None, "nobody answered NDP for {vip}");
    }
    assert!(echo_once(&client, "[fd00:63::20]:8080".parse().expect("addr"), Duration::from_secs(2)));
    assert_eq!(ipv6::neigh_mac(&client, "fd00:63::20"), Some(ipv6::mac_of(&server, "eth0")));

    // SIGKILL: the marks let the next start clear the VIPs and set them up once.
    lab.daemon_mut("s1").child.kill().expect("kill the node");
    let _ = lab.daemon_mut("s1").child.wait();
    assert!(lo_addrs(&server).contains("fd00:63::99/128"), "a killed daemon leaves its VIPs");
    lab.start_daemon("s1", &config);
    wait_until("the node daemon is ready again", Duration::from_secs(10), || {
        lab.daemon("s1").logged(" ready ")
    });
    assert!(lab.daemon("s1").logged("cleared the node set-up a previous run left"));
    let lo = lo_addrs(&server);
    assert_eq!(lo.matches("fd00:63::99/128").count(), 1, "set up once:\n{lo}");

    // SIGTERM: lo as found, the state file gone.
    let pid = lab.daemon("s1").child.id().to_string();
    support::run(&["kill", "-TERM", &pid]);
    let status = lab.daemon_mut("s1").child.wait().expect("wait");
    assert!(status.success(), "{status}");
    let lo = lo_addrs(&server);
    assert!(!lo.contains("fd00:63::") && !lo.contains("10.63.0.97"), "lo as found:\n{lo}");
    let run_dir = lab.net.dir.join("run").join("s1");
    let left: Vec<_> =
        std::fs::read_dir(&run_dir).expect("run dir").flatten().map(|e| e.file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().starts_with("node-")), "{left:?}");
}
