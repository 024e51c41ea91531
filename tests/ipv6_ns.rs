//! IPv6 through the real daemon, in namespaces: a NAT66 service (IPv6 VIP, gateway VIP and
//! server) on two dual-stack ATMs with IPv4 heartbeats. The primary answers Neighbor
//! Solicitations for the VIPs from user space (they are never kernel addresses), its TUN
//! steering and engine carry the requests and replies, the TCP check reaches the IPv6
//! server; when the primary's daemon is SIGKILLed the backup's unsolicited Neighbor
//! Advertisements (Override) move the client's neighbour entry and the service answers
//! again through it.
//!
//! Topology (namespaces `csl-v6<pid>-*`, veth pairs created inside them; lab links without
//! duplicate-address detection): client and ATMs' eth0 on `fd00:61::/64` (and IPv4
//! 10.61.1.0/24 for the heartbeats), ATMs' eth1 and the server on `fd00:62::/64`.
#![allow(clippy::disallowed_methods)] // reason: a real-network test waits on the wall clock

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::daemon::DaemonLab;
use support::traffic::echo_once;
use support::wait::wait_until;
use support::{in_ns, ipv6};

const HELPER_ENV: &str = "CSL_V6_HELPER";
const VIP: &str = "[fd00:61::99]:8080";

#[test]
fn helper_echo_server() {
    support::echo_server_helper(HELPER_ENV, Duration::from_secs(120));
}

const CONFIG: &str = r#"{
  cluster: { name: "v6lab", id: 61, heartbeat_port: 17100, secret_file: "secret" },
  atms: [ { name: "atm1", address: "10.61.1.1", interface: "eth0" },
          { name: "atm2", address: "10.61.1.2", interface: "eth0" } ],
  timers: { heartbeat_ms: 100, dead_after: 3 },
  arp: { gratuitous_count: 3, gratuitous_interval_ms: 100, refresh_s: 5 },
  services: [ { name: "echo6", vip: "fd00:61::99", port: 8080, forwarding: "nat", scheduler: "rr",
                gateway_vip: "fd00:62::1",
                servers: [ { name: "s1", address: "fd00:62::20", port: 8080 } ],
                checks: [ { kind: "tcp", interval_ms: 500, timeout_ms: 250, rise: 1, fall: 2 } ] } ],
}
"#;

#[test]
fn an_ipv6_nat_service_is_served_and_survives_the_primary_daemon() {
    if !ipv6::can_run(HELPER_ENV) {
        return;
    }
    let mut lab = DaemonLab::new("csl-v6", "");
    let (sw, client, server) = (lab.ns("sw"), lab.ns("client"), lab.ns("server"));
    let (a1, a2) = (lab.ns("atm1"), lab.ns("atm2"));
    lab.net.bridge(&sw, "brf");
    lab.net.bridge(&sw, "brb");
    lab.net.attach(&client, "eth0", "10.61.1.10/24", &sw, "c0", "brf");
    lab.net.attach(&a1, "eth0", "10.61.1.1/24", &sw, "a1f", "brf");
    lab.net.attach(&a2, "eth0", "10.61.1.2/24", &sw, "a2f", "brf");
    lab.net.attach(&a1, "eth1", "10.61.2.1/24", &sw, "a1b", "brb");
    lab.net.attach(&a2, "eth1", "10.61.2.2/24", &sw, "a2b", "brb");
    lab.net.attach(&server, "eth0", "10.61.2.20/24", &sw, "s0", "brb");
    ipv6::addr6(&client, "fd00:61::10/64", "eth0");
    for (ns, n) in [(&a1, 1), (&a2, 2)] {
        lab.net.forwarding(ns);
        in_ns(ns, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        ipv6::addr6(ns, &format!("fd00:61::{n}/64"), "eth0");
        // Not ::1: that is the gateway VIP, which no ATM may hold as a kernel address.
        ipv6::addr6(ns, &format!("fd00:62::1{n}/64"), "eth1");
    }
    ipv6::addr6(&server, "fd00:62::20/64", "eth0");
    in_ns(&server, &["ip", "-6", "route", "add", "default", "via", "fd00:62::1"]);
    ipv6::write_private(&lab.net.dir, &[("secret", "lab-secret-0123456789\n"), ("v6.json5", CONFIG)]);
    let srv = support::spawn_echo_helper(&server, HELPER_ENV, "[fd00:62::20]:8080");
    lab.net.others.push(srv);
    let config = lab.net.dir.join("v6.json5");
    lab.start_daemon("atm1", &config);
    lab.start_daemon("atm2", &config);

    let addr: SocketAddr = VIP.parse().expect("addr");
    wait_until("one primary", Duration::from_secs(10), || lab.primaries().len() == 1);
    let first = lab.primaries()[0].clone();
    let (first_ns, other_ns) = if first == "atm1" { (&a1, &a2) } else { (&a2, &a1) };
    wait_until("the IPv6 service answers through the VIP", Duration::from_secs(10), || {
        echo_once(&client, addr, Duration::from_millis(500))
    });
    assert_eq!(
        ipv6::neigh_mac(&client, "fd00:61::99"),
        Some(ipv6::mac_of(first_ns, "eth0")),
        "the VIP is at the primary's MAC (NDP)"
    );
    let ok = (0..20).filter(|_| echo_once(&client, addr, Duration::from_secs(1))).count();
    assert_eq!(ok, 20, "requests through the IPv6 VIP");

    // The primary's daemon dies; its host stays up and answers no NDP for the VIP.
    lab.daemon_mut(&first).child.kill().expect("kill");
    let took = wait_until("the service answers again", Duration::from_secs(10), || {
        echo_once(&client, addr, Duration::from_millis(300))
    });
    println!("IPv6 service back {took:?} after SIGKILL of {first}");
    assert_eq!(
        ipv6::neigh_mac(&client, "fd00:61::99"),
        Some(ipv6::mac_of(other_ns, "eth0")),
        "the backup's advertisement moved the client's neighbour entry"
    );
    let ok = (0..20).filter(|_| echo_once(&client, addr, Duration::from_secs(1))).count();
    assert_eq!(ok, 20, "requests through the new primary");
}
